"""The Dramatiq actors the integration tests run in a real ``dramatiq`` worker process."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from gateway.integrations.dramatiq import GatewayMiddleware, report_progress
from gateway.integrations.sender import Sender
from tests.integrations import hold as rows
from tests.integrations.hold import broker_url, first_time

broker = RedisBroker(url=broker_url())
broker.add_middleware(GatewayMiddleware(Sender.from_env(backoff=0.05, retries=3, timeout=5)))
dramatiq.set_broker(broker)


QUEUE = os.environ.get("TEST_DRAMATIQ_QUEUE", "imports")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def import_rows(total: int, go: str | None = None, fail_at: int | None = None) -> dict[str, Any]:
    """Reports progress row by row; waits for ``go`` after the first row; fails at ``fail_at``."""
    return rows.import_rows(report_progress, total, go, fail_at)


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=20)
def flaky(key: str) -> str:
    """Fails its first run, then succeeds."""
    if first_time(key):
        raise ConnectionError("upstream timed out")
    return "ok on retry"
