"""RQ: every job enqueued with a gateway job is reported from enqueue to finish.

::

    from gateway.integrations.rq import enqueue, report_progress

    enqueue(queue, import_customers, rows, gateway_job=external_id)   # producer: reports queued

    rq worker -w gateway.integrations.rq.GatewayWorker imports         # worker: the rest

    def import_customers(rows):                                         # inside the task
        for i, row in enumerate(rows, 1):
            ...
            report_progress(i, len(rows), "importing rows")

The gateway job travels in the RQ job's ``meta["gateway_job"]``. What is reported:

| when | report |
|---|---|
| ``enqueue(...)`` | ``queued`` in the RQ queue's name |
| the worker starts it | ``processing`` |
| ``report_progress(current, total, step)`` | ``processing`` with progress |
| it returns | ``complete`` with the return value (a dict as it is, else ``{"value": …}``) |
| it raises, with an RQ ``Retry`` left | ``failed`` (``retrying``), then ``queued``: the next attempt |
| it raises, no retry left | ``failed`` with the exception's class and message |

``GatewayWorker`` reads GATEWAY_URL, GATEWAY_SOURCE and WORKER_WEBHOOK_SECRET (``Sender.from_env``).
RQ runs each job in a forked work horse that exits after it; the horse waits for its reports at
most ``flush_timeout`` seconds (default 5) before it goes, so a gateway that is down delays a
job's end by that much at most and never fails it.
"""

from __future__ import annotations

from typing import Any

from rq import Queue, Worker, get_current_job
from rq.job import Job, JobStatus

from gateway.integrations.sender import JOB_KEY, Sender, failure_fields, result_summary

_sender: Sender | None = None  # the worker's sender, for report_progress inside its jobs


def enqueue(queue: Queue, func: Any, *args: Any, gateway_job: str, sender: Sender | None = None, **kwargs: Any) -> Job:
    """``queue.enqueue(func, *args, **kwargs)`` carrying ``gateway_job``, reported ``queued``."""
    meta = {**kwargs.pop("meta", {}), JOB_KEY: gateway_job}
    job = queue.enqueue(func, *args, meta=meta, **kwargs)
    out = sender or _default_sender()
    out.submit(gateway_job, "queued", queue={"name": queue.name})
    return job


def report_progress(current: float | None = None, total: float | None = None, step: str | None = None) -> None:
    """From inside a running job: ``current`` of ``total`` done, in ``step``. A no-op outside a
    ``GatewayWorker`` or for a job without a gateway job."""
    job = get_current_job()
    gateway_job = job.meta.get(JOB_KEY) if job is not None else None
    if gateway_job and _sender is not None:
        progress = {k: v for k, v in {"current": current, "total": total, "step": step}.items() if v is not None}
        _sender.submit(gateway_job, "processing", progress=progress or None)


class GatewayWorker(Worker):
    """An RQ ``Worker`` that reports each job carrying a gateway job (``rq worker -w``)."""

    flush_timeout = 5.0

    def __init__(self, *args: Any, sender: Sender | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sender = sender or _default_sender()
        self._exception: BaseException | None = None

    def perform_job(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> bool:
        """Report processing, run the job as RQ does, then report how it ended."""
        global _sender
        gateway_job = job.meta.get(JOB_KEY)
        if not gateway_job:
            return bool(super().perform_job(job, queue, *args, **kwargs))
        _sender, self._exception = self.sender, None
        self.sender.submit(gateway_job, "processing")
        try:
            ok = bool(super().perform_job(job, queue, *args, **kwargs))
            if ok:
                self.sender.submit(gateway_job, "complete", result=result_summary(job.return_value()))
            elif job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.SCHEDULED):  # RQ's Retry took it back
                self.sender.submit(gateway_job, "failed", error={"code": "retrying", "message": "The job will be retried", "retryable": True})
                self.sender.submit(gateway_job, "queued", queue={"name": queue.name})
            else:
                exc = self._exception or RuntimeError("the job failed")
                self.sender.submit(gateway_job, "failed", **failure_fields(exc, retryable=True))
            return ok
        finally:
            self.sender.flush(self.flush_timeout)  # the work horse exits after this job

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """Keep the job's exception for its failed report, then let RQ handle it as usual."""
        self._exception = exc_info[1] if len(exc_info) > 1 else None
        super().handle_exception(job, *exc_info)


def _default_sender() -> Sender:
    global _sender
    if _sender is None:
        _sender = Sender.from_env()
    return _sender
