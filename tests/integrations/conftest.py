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
import redis
import requests

from tests.conftest import API_KEY
from tests.relay_helpers import Watcher, job_frame
from tests.servers import Server

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


@pytest.fixture
def queue_name() -> str:
    return f"imports-{uuid.uuid4().hex[:8]}"


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


def watch(server: Server, reg: dict[str, Any]) -> Watcher:
    w = Watcher(server.url)
    w.subscribe(reg["job"]["id"], reg["token"])
    w.wait_for(job_frame(reg["job"]["id"]))
    return w


def reported(server: Server, job_id: str, state: str) -> bool:
    """The gateway has recorded an event in ``state`` for the job (the trace's event entries)."""
    timeline = requests.get(f"{server.url}/api/jobs/{job_id}/trace", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()["timeline"]
    return any(e["what"] == "delivery" and e.get("event_type") == f"job.{state}" and e.get("decision") == "applied" for e in timeline)


def go(broker_url: str, key: str) -> None:
    redis.Redis.from_url(broker_url).set(key, 1)


def states_in_order(w: Watcher, job_id: str) -> list[str]:
    """The states of ``job_id`` in the frames seen, consecutive repeats folded."""
    out: list[str] = []
    for frame in w.seen:
        same_job = frame.get("type") == "job" and frame["job"]["id"] == job_id
        if same_job and (not out or out[-1] != frame["job"]["state"]):
            out.append(frame["job"]["state"])
    return out
