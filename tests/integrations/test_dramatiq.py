"""Dramatiq through a real ``dramatiq`` worker process and Redis broker, with GatewayMiddleware on
both sides: queued at send, processing with progress, complete or failed, a retry as the next
attempt, seen in order by a watcher."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import register
from tests.integrations.conftest import go, reported, start, states_in_order, stop, watch, worker_env
from tests.loadgen import wait_for
from tests.relay_helpers import job_frame

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

QUEUE = f"dq-{os.getpid()}"  # one queue per test process, agreed by the test and its workers


@pytest.fixture
def actors(server: Any, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The actors module, its broker and middleware pointed at this test's broker and gateway."""
    for key, value in {**worker_env(server.url, broker_url), "TEST_DRAMATIQ_QUEUE": QUEUE}.items():
        monkeypatch.setenv(key, value)
    import tests.integrations.dramatiq_tasks as module  # configured once per test process

    return module


@pytest.fixture
def worker(server: Any, broker_url: str, tmp_path: Path) -> Any:
    procs = []

    def run() -> None:
        cmd = [sys.executable, "-m", "dramatiq", "tests.integrations.dramatiq_tasks", "--processes", "1", "--threads", "1", "--queues", QUEUE, f"{QUEUE}.DQ"]
        procs.append(start(cmd, {**worker_env(server.url, broker_url), "TEST_DRAMATIQ_QUEUE": QUEUE}, tmp_path / "dramatiq.log"))

    yield run
    for proc in procs:
        stop(proc)


def test_a_message_is_reported_from_send_to_complete(server, actors, worker, broker_url):
    reg = register(server.url, "worker", queue=QUEUE)
    job_id, key = reg["job"]["id"], f"go-{uuid.uuid4().hex}"
    w = watch(server, reg)
    actors.import_rows.send_with_options(args=(3,), kwargs={"go": key}, gateway_job=reg["job"]["external_id"])
    wait_for(lambda: reported(server, job_id, "queued"), 15, "the queued report of the send")
    worker()
    w.wait_for(job_frame(job_id, state="processing", progress__current=1, progress__total=3), timeout=30)
    go(broker_url, key)
    done = w.wait_for(job_frame(job_id, state="complete"))
    assert done["job"]["result"] == {"imported": 3}
    assert states_in_order(w, job_id) == ["queued", "processing", "complete"]


def test_a_failing_message_is_reported_failed_with_what_failed(server, actors, worker):
    reg = register(server.url, "worker", queue=QUEUE)
    w = watch(server, reg)
    worker()
    actors.import_rows.send_with_options(args=(5,), kwargs={"fail_at": 2}, gateway_job=reg["job"]["external_id"])
    failed = w.wait_for(job_frame(reg["job"]["id"], state="failed"), timeout=30)
    assert failed["job"]["error"] == {"code": "ValueError", "message": "Row 2: missing email", "retryable": True}


def test_a_dramatiq_retry_is_the_next_attempt(server, actors, worker):
    reg = register(server.url, "worker", queue=QUEUE)
    w = watch(server, reg)
    worker()
    actors.flaky.send_with_options(args=(f"first-{uuid.uuid4().hex}",), gateway_job=reg["job"]["external_id"])
    done = w.wait_for(job_frame(reg["job"]["id"], state="complete"), timeout=30)
    assert done["job"]["attempt"] == 2 and done["job"]["result"] == {"value": "ok on retry"}
    assert "failed" in states_in_order(w, reg["job"]["id"])


def test_positions_follow_the_queue(server, actors, worker, broker_url):
    """Five messages behind a busy worker (one thread) read 1..5 of 5, and move up as it takes them;
    a message the worker has prefetched but not started is still queued."""
    blocker = register(server.url, "worker", queue=QUEUE)
    regs = [register(server.url, "worker", queue=QUEUE) for _ in range(5)]
    keys = [f"go-{uuid.uuid4().hex}" for _ in range(6)]
    w = watch(server, blocker)
    for reg in regs:
        w.subscribe(reg["job"]["id"], reg["token"])
    worker()
    actors.import_rows.send_with_options(args=(2,), kwargs={"go": keys[0]}, gateway_job=blocker["job"]["external_id"])
    w.wait_for(job_frame(blocker["job"]["id"], state="processing"), timeout=30)
    for reg, key in zip(regs, keys[1:], strict=True):
        actors.import_rows.send_with_options(args=(2,), kwargs={"go": key}, gateway_job=reg["job"]["external_id"])
    w.wait_for_all(*(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=5) for i, r in enumerate(regs, 1)))
    go(broker_url, keys[0])  # the worker finishes the blocker and takes the first of the five
    w.wait_for_all(job_frame(regs[0]["job"]["id"], state="processing"),
                   *(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=4) for i, r in enumerate(regs[1:], 1)),
                   timeout=30)
    for key in keys[1:]:
        go(broker_url, key)
    w.wait_for_all(*(job_frame(r["job"]["id"], state="complete") for r in regs), timeout=60)
