"""The Celery app the integration tests run in a real worker process (configured by the environment)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from gateway.integrations.celery import install, report_progress
from gateway.integrations.sender import Sender
from tests.integrations import hold as rows
from tests.integrations.hold import broker_url, wait_for_go

app = Celery("gateway_tests", broker=broker_url())
app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
install(app, Sender.from_env(backoff=0.05, retries=3, timeout=5))


@app.task
def import_rows(total: int, go: str | None = None, fail_at: int | None = None) -> dict[str, Any]:
    """Reports progress row by row; waits for ``go`` after the first row; fails at ``fail_at``."""
    return rows.import_rows(report_progress, total, go, fail_at)


@app.task(bind=True, max_retries=2)
def flaky(self: Any, go: str | None = None) -> str:
    """Fails its first run with a retry, then succeeds."""
    if self.request.retries == 0:
        if go:
            wait_for_go(go)
        raise self.retry(exc=ConnectionError("upstream timed out"), countdown=0)
    return "ok on retry"
