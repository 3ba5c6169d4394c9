"""The RQ jobs the integration tests run in a real ``rq worker -w gateway.integrations.rq.GatewayWorker``."""

from __future__ import annotations

from typing import Any

from gateway.integrations.rq import report_progress
from tests.integrations import hold as rows
from tests.integrations.hold import first_time


def import_rows(total: int, go: str | None = None, fail_at: int | None = None) -> dict[str, Any]:
    """Reports progress row by row; waits for ``go`` after the first row; fails at ``fail_at``."""
    return rows.import_rows(report_progress, total, go, fail_at)


def flaky(key: str) -> str:
    """Fails its first run, then succeeds (enqueued with ``Retry(max=1)``)."""
    if first_time(key):
        raise ConnectionError("upstream timed out")
    return "ok on retry"
