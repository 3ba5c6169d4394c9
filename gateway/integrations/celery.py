"""Celery: every task sent with a gateway job is reported from publish to finish.

::

    from gateway.integrations.celery import install, report_progress
    from gateway.integrations.sender import Sender

    install(celery_app, Sender.from_env())          # in the code both producers and workers import

    import_customers.apply_async(args, headers={"gateway_job": external_id})

    @celery_app.task(bind=True)
    def import_customers(self, rows):
        for i, row in enumerate(rows, 1):
            ...
            report_progress(i, len(rows), "importing rows")

What is reported, from Celery's own signals:

| signal | report |
|---|---|
| ``before_task_publish`` | ``queued`` in the queue it is routed to (a retry's message: ``failed`` with ``retrying``, then ``queued``: the next attempt) |
| ``task_prerun`` | ``processing`` |
| ``report_progress(current, total, step)`` | ``processing`` with progress |
| ``task_success`` | ``complete`` with the return value (a dict as it is, else ``{"value": …}``) |
| ``task_failure`` | ``failed`` with the exception's class and message; ``retryable`` unless Celery's own retries ran out |

A task without the header is untouched; a report never raises into the task or slows it
(``sender.Sender``).
"""

from __future__ import annotations

from typing import Any

from gateway.integrations.sender import JOB_KEY, Sender, failure_fields, result_summary

_ATTR = "gateway_sender"


def install(app: Any, sender: Sender) -> None:
    """Connect the reporting signal handlers for ``app`` (a ``celery.Celery``); idempotent."""
    from celery import signals

    if getattr(app, _ATTR, None) is not None:
        setattr(app, _ATTR, sender)
        return
    setattr(app, _ATTR, sender)

    def _sender_of(task: Any) -> Sender | None:
        return getattr(getattr(task, "app", None), _ATTR, None)

    def published(sender: Any = None, routing_key: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        job = (headers or {}).get(JOB_KEY)
        if not job or sender not in app.tasks:  # another app's task
            return
        out: Sender = getattr(app, _ATTR)
        queue = {"name": routing_key or "celery"}
        retries = (headers or {}).get("retries")
        if retries:
            out.submit(job, "failed", error={"code": "retrying", "message": f"Retry {retries} of the task", "retryable": True})
        out.submit(job, "queued", queue=queue)

    def started(task: Any = None, **_: Any) -> None:
        job, out = _job(task), _sender_of(task)
        if job and out:
            out.submit(job, "processing")

    def succeeded(sender: Any = None, result: Any = None, **_: Any) -> None:
        job, out = _job(sender), _sender_of(sender)
        if job and out:
            out.submit(job, "complete", result=result_summary(result))

    def failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        job, out = _job(sender), _sender_of(sender)
        if job and out and exception is not None:
            out.submit(job, "failed", **failure_fields(exception, retryable=not _retries_exhausted(sender)))

    signals.before_task_publish.connect(published, weak=False, dispatch_uid=f"gateway-publish-{id(app)}")
    signals.task_prerun.connect(started, weak=False)
    signals.task_success.connect(succeeded, weak=False)
    signals.task_failure.connect(failed, weak=False)


def report_progress(current: float | None = None, total: float | None = None, step: str | None = None) -> None:
    """From inside a running task: ``current`` of ``total`` done, in ``step``. A no-op outside a
    task, or for a task without a gateway job."""
    from celery import current_task

    task = current_task
    out = getattr(getattr(task, "app", None), _ATTR, None) if task else None
    job = _job(task)
    if job and out:
        progress = {k: v for k, v in {"current": current, "total": total, "step": step}.items() if v is not None}
        out.submit(job, "processing", progress=progress or None)


def _job(task: Any) -> str | None:
    request = getattr(task, "request", None)
    if request is None:
        return None
    job = request.get(JOB_KEY) if hasattr(request, "get") else None
    return job or (getattr(request, "headers", None) or {}).get(JOB_KEY)


def _retries_exhausted(task: Any) -> bool:
    max_retries = getattr(task, "max_retries", None)
    return max_retries is not None and getattr(task.request, "retries", 0) >= max_retries
