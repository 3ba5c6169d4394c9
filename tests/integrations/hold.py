"""How the tests hold a task mid-run without sleeping as synchronisation: the task waits for a
Redis key that the test sets once it has seen what it wanted to see."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import redis


def broker_url() -> str:
    return os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/9")


def wait_for_go(key: str, timeout: float = 30) -> None:
    """Block until the test sets ``key`` (polled every 20 ms, in the worker process)."""
    r = redis.Redis.from_url(broker_url())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not r.exists(key):
        time.sleep(0.02)


def first_time(key: str) -> bool:
    """True the first time any process asks for ``key`` (a task's first run)."""
    return bool(redis.Redis.from_url(broker_url()).set(key, 1, nx=True))


def import_rows(report_progress: Callable[[int, int, str], None], total: int, go: str | None, fail_at: int | None) -> dict[str, Any]:
    """The body every queue's test task runs: progress row by row through that queue's
    ``report_progress``; waits for ``go`` after the first row; fails at row ``fail_at``."""
    for row in range(1, total + 1):
        if fail_at == row:
            raise ValueError(f"Row {row}: missing email")
        report_progress(row, total, "importing rows")
        if row == 1 and go:
            wait_for_go(go)
    return {"imported": total}
