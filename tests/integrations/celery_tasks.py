"""The Celery app the integration tests run in a real worker process (configured by the environment)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from gateway.integrations.celery import install, report_progress
from gateway.integrations.sender import Sender
from tests.integrations.hold import broker_url, wait_for_go

app = Celery("gateway_tests", broker=broker_url())
app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
install(app, Sender.from_env(backoff=0.05, retries=3, timeout=5))


@app.task
def import_rows(total: int, go: str | None = None, fail_at: int | None = None) -> dict[str, Any]:
    """Reports progress row by row; waits for ``go`` after the first row; fails at ``fail_at``."""
    for row in range(1, total + 1):
        if fail_at == row:
            raise ValueError(f"Row {row}: missing email")
        report_progress(row, total, "importing rows")
        if row == 1 and go:
            wait_for_go(go)
    return {"imported": total}


@app.task(bind=True, max_retries=2)
def flaky(self: Any, go: str | None = None) -> str:
    """Fails its first run with a retry, then succeeds."""
    if self.request.retries == 0:
        if go:
            wait_for_go(go)
        raise self.retry(exc=ConnectionError("upstream timed out"), countdown=0)
    return "ok on retry"
