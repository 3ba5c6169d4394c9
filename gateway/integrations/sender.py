"""Reports sent off the task's thread: a bounded queue and one daemon thread per process.

A task must never fail or wait because the gateway is slow or down. ``Sender.submit`` fixes the
event's id and time at once (so a report sent late still sorts where it happened, and a retried
send is counted once), puts it on a bounded queue and returns; a daemon thread posts it through
``gateway.reporter.Reporter``, whose retries (same event id, backoff) ride out short outages.
A report that still cannot get through, or that finds the queue full, is dropped with a log
line naming the job: the watcher then hears the next report, and the gateway's stall watchdog
covers a job that never reports again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.reporter import Reporter, ReportError

log = logging.getLogger("gateway.integrations")

#: what a task carries to name its gateway job (a Celery header, RQ meta, a Dramatiq option)
JOB_KEY = "gateway_job"


@dataclass
class Report:
    """One event, its id and time fixed when it happened."""

    job: str
    state: str
    fields: dict[str, Any]
    event_id: str = field(default_factory=lambda: "evt_" + uuid.uuid4().hex)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Sender:
    """Sends ``Report``s through a ``Reporter`` from a background thread; never raises to the caller."""

    def __init__(self, reporter: Reporter, *, maxsize: int = 10_000):
        self.reporter = reporter
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=UTC)
        self._pid: int | None = None
        self._queue: queue.Queue[Report | None] = queue.Queue(maxsize)

    @classmethod
    def from_env(cls, **options: Any) -> Sender:
        """A sender for GATEWAY_URL, GATEWAY_SOURCE (default ``worker``) and WORKER_WEBHOOK_SECRET."""
        reporter = Reporter(os.environ["GATEWAY_URL"], os.environ["WORKER_WEBHOOK_SECRET"], os.environ.get("GATEWAY_SOURCE", "worker"), **options)
        return cls(reporter)

    def submit(self, job: str, state: str, **fields: Any) -> None:
        """Queue one report for ``job`` (its external id); returns at once."""
        report = Report(job, state, fields, occurred_at=self._tick())
        self._ensure_thread()
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            log.warning("gateway report dropped: the send queue is full", extra={"external_id": job, "state": state})

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued report was sent or dropped; False if ``timeout`` ran out first."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _tick(self) -> datetime:
        # the gateway orders a job's events by time at millisecond precision: two reports of one
        # process (a retry's failed, then queued) must never share a millisecond
        with self._lock:
            now = datetime.now(UTC)
            if now - self._last < timedelta(milliseconds=1):
                now = self._last + timedelta(milliseconds=1)
            self._last = now
            return now

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (a forked worker starts its own)
                if self._pid is not None:
                    self._queue = queue.Queue(self.maxsize)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="gateway-reports", daemon=True).start()

    def _run(self) -> None:
        while True:
            report = self._queue.get()
            try:
                if report is not None:
                    self.reporter.report(report.job, report.state, event_id=report.event_id, occurred_at=report.occurred_at, **report.fields)
            except ReportError as exc:
                log.warning("gateway report dropped: %s", exc, extra={"external_id": report.job if report else None, "state": report.state if report else None})
            except Exception:
                log.exception("gateway report failed", extra={"external_id": report.job if report else None})
            finally:
                self._queue.task_done()


def failure_fields(exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    """The ``error`` of a failed report: the exception's class and message, bounded."""
    message = str(exc) or type(exc).__name__
    return {"error": {"code": type(exc).__name__, "message": message[:500], "retryable": retryable}}


def result_summary(result: Any) -> dict[str, Any] | None:
    """A task's return value as the job's ``result``: a dict as it is, anything else under ``value``."""
    if result is None:
        return None
    if isinstance(result, dict):
        return result
    text = result if isinstance(result, (str, int, float, bool)) else repr(result)
    return {"value": text if not isinstance(text, str) else text[:500]}
