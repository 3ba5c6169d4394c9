"""Report the jobs of the queues you already run, one line each.

- Celery: ``gateway.integrations.celery.install(celery_app, sender)``
- RQ: ``gateway.integrations.rq.GatewayWorker`` and ``enqueue(...)``
- Dramatiq: ``gateway.integrations.dramatiq.GatewayMiddleware(sender)``

Each reports a task that carries a gateway job (its external id) from enqueue to finish:
``queued`` with its queue when published, ``processing`` when a worker starts it, progress
from inside (``report_progress``), ``complete`` with a summary of its result, ``failed`` with
the exception's class and message, and a broker retry as the job's next attempt. Tasks without
a gateway job are untouched. Reports go through ``sender.Sender``: off the task's thread,
bounded, never raising into the task. The queue libraries are imported only by their module.
"""
