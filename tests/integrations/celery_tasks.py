"""The Celery app the integration tests run in a real worker process (configured by the environment)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

from gateway.integrations.celery import install, report_progress
from gateway.integrations.sender import Sender

app = Celery("gateway_tests", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/9"))
app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
install(app, Sender.from_env(backoff=0.05, retries=3, timeout=5))


def wait_for_go(key: str, timeout: float = 30) -> None:
    """Block until the test sets ``key`` in Redis (the test's way of holding a task mid-run)."""
    r = redis.Redis.from_url(os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/9"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not r.exists(key):
        time.sleep(0.02)


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
