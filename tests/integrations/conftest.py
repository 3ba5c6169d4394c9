"""Fixtures for the queue integrations: a unique Redis namespace, gateway jobs, a watcher."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    """A Redis database of its own for one test's broker (db 9..14 by process), flushed after."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{9 + os.getpid() % 6}"
    yield url
    r = redis.Redis.from_url(url)
    for key in r.scan_iter("*"):
        r.delete(key)


def worker_env(server_url: str, broker_url: str) -> dict[str, str]:
    from tests.signing import STANDARD_SECRET

    return {**os.environ, "GATEWAY_URL": server_url, "GATEWAY_SOURCE": "worker", "WORKER_WEBHOOK_SECRET": STANDARD_SECRET,
            "TEST_BROKER_URL": broker_url, "PYTHONPATH": str(ROOT)}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    """A worker process with its output in ``log`` (shown when a test fails)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[Any]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


PY = sys.executable
