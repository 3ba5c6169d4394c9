"""Dramatiq: a middleware reports every message sent with a gateway job, from send to finish.

::

    from gateway.integrations.dramatiq import GatewayMiddleware, report_progress
    from gateway.integrations.sender import Sender

    broker.add_middleware(GatewayMiddleware(Sender.from_env()))   # producers and workers

    import_customers.send_with_options(args=(rows,), gateway_job=external_id)

    @dramatiq.actor
    def import_customers(rows):
        for i, row in enumerate(rows, 1):
            ...
            report_progress(i, len(rows), "importing rows")

| hook | report |
|---|---|
| ``before_enqueue`` | ``queued`` in the message's queue (a retry's message: ``failed`` with ``retrying``, then ``queued``: the next attempt) |
| ``before_process_message`` | ``processing`` |
| ``report_progress(current, total, step)`` | ``processing`` with progress |
| ``after_process_message``, no exception | ``complete`` with the result (a dict as it is, else ``{"value": …}``) |
| ``after_nack`` (rejected for good, no retry left) | ``failed`` with the exception's class and message |

A message that fails with a retry left is not reported failed by its run: the retry's
``before_enqueue`` reports it, as the end of that attempt and the start of the next.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq

from gateway.integrations.sender import JOB_KEY, Sender, failure_fields, result_summary

_current = threading.local()  # the message a worker thread is processing, for report_progress


class GatewayMiddleware(dramatiq.Middleware):
    """Reports messages that carry ``gateway_job`` in their options; others are untouched."""

    def __init__(self, sender: Sender):
        self.sender = sender

    def before_enqueue(self, broker: Any, message: Any, delay: int) -> None:
        job = message.options.get(JOB_KEY)
        if not job or (message.options.get("retries") and not delay):  # a retry handed from "<queue>.DQ" to its queue
            return
        if message.options.get("retries"):
            self.sender.submit(job, "failed", error={"code": "retrying", "message": f"Retry {message.options['retries']} of the message", "retryable": True})
        self.sender.submit(job, "queued", queue={"name": _queue_of(message.queue_name)})

    def before_process_message(self, broker: Any, message: Any) -> None:
        _current.message = message
        job = message.options.get(JOB_KEY)
        if job:
            self.sender.submit(job, "processing")

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None) -> None:
        _current.message = None
        job = message.options.get(JOB_KEY)
        if not job:
            return
        if exception is None:
            self.sender.submit(job, "complete", result=result_summary(result))
        # a failure is reported when the message is rejected for good (after_nack): whether the
        # Retries middleware retries it is decided after this hook (after-hooks run in reverse)

    def after_nack(self, broker: Any, message: Any) -> None:
        job = message.options.get(JOB_KEY)
        if job:
            exception = getattr(message, "_exception", None) or RuntimeError("the message failed")
            self.sender.submit(job, "failed", **failure_fields(exception, retryable=True))

    def after_skip_message(self, broker: Any, message: Any) -> None:
        _current.message = None


def report_progress(current: float | None = None, total: float | None = None, step: str | None = None) -> None:
    """From inside a running actor: ``current`` of ``total`` done, in ``step``. A no-op outside a
    message carrying a gateway job, or without ``GatewayMiddleware`` on the broker."""
    message = getattr(_current, "message", None)
    job = message.options.get(JOB_KEY) if message is not None else None
    if not job:
        return
    middleware = next((m for m in dramatiq.get_broker().middleware if isinstance(m, GatewayMiddleware)), None)
    if middleware is not None:
        progress = {k: v for k, v in {"current": current, "total": total, "step": step}.items() if v is not None}
        middleware.sender.submit(job, "processing", progress=progress or None)


def _queue_of(queue_name: str) -> str:
    # a delayed message (a retry's backoff) waits in "<queue>.DQ" and runs in "<queue>"
    return queue_name[:-3] if queue_name.endswith(".DQ") else queue_name
