"""The RQ jobs the integration tests run in a real ``rq worker -w gateway.integrations.rq.GatewayWorker``."""

from __future__ import annotations

from typing import Any

from gateway.integrations.rq import report_progress
from tests.integrations.hold import first_time, wait_for_go


def import_rows(total: int, go: str | None = None, fail_at: int | None = None) -> dict[str, Any]:
    """Reports progress row by row; waits for ``go`` after the first row; fails at ``fail_at``."""
    for row in range(1, total + 1):
        if fail_at == row:
            raise ValueError(f"Row {row}: missing email")
        report_progress(row, total, "importing rows")
        if row == 1 and go:
            wait_for_go(go)
    return {"imported": total}


def flaky(key: str) -> str:
    """Fails its first run, then succeeds (enqueued with ``Retry(max=1)``)."""
    if first_time(key):
        raise ConnectionError("upstream timed out")
    return "ok on retry"
