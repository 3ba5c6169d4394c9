"""RQ through a real ``rq worker -w gateway.integrations.rq.GatewayWorker`` and Redis: every job
enqueued with a gateway job is reported queued → processing (with progress) → complete or
failed, an RQ ``Retry`` is the next attempt, and a watcher sees it all in order."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Retry

from gateway.integrations.rq import enqueue
from gateway.integrations.sender import Sender
from gateway.reporter import Reporter
from tests.conftest import register
from tests.integrations import rq_tasks
from tests.integrations.conftest import go, reported, start, states_in_order, stop, watch, worker_env
from tests.loadgen import wait_for
from tests.relay_helpers import Watcher, job_frame
from tests.signing import STANDARD_SECRET

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


@pytest.fixture
def queue(broker_url: str, queue_name: str) -> Queue:
    return Queue(queue_name, connection=redis.Redis.from_url(broker_url))


@pytest.fixture
def sender(server: Any) -> Sender:
    return Sender(Reporter(server.url, STANDARD_SECRET, "worker", backoff=0.05, retries=3, timeout=5))


@pytest.fixture
def worker(server: Any, broker_url: str, queue_name: str, tmp_path: Path) -> Any:
    """A function starting one real RQ worker process (GatewayWorker) on this test's queue."""
    procs = []

    def run() -> None:
        cmd = [str(Path(__import__("sys").executable).with_name("rq")), "worker", "-w", "gateway.integrations.rq.GatewayWorker",
               "--url", broker_url, "--with-scheduler", queue_name]
        procs.append(start(cmd, worker_env(server.url, broker_url), tmp_path / "rq.log"))

    yield run
    for proc in procs:
        stop(proc)


def test_a_job_is_reported_from_enqueue_to_complete(server, queue, sender, worker, broker_url, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    job_id, key = reg["job"]["id"], f"go-{uuid.uuid4().hex}"
    w = watch(server, reg)
    enqueue(queue, rq_tasks.import_rows, 3, go=key, gateway_job=reg["job"]["external_id"], sender=sender)
    wait_for(lambda: reported(server, job_id, "queued"), 15, "the queued report of the enqueue")
    worker()
    w.wait_for(job_frame(job_id, state="processing", progress__current=1, progress__total=3))
    go(broker_url, key)
    done = w.wait_for(job_frame(job_id, state="complete"))
    assert done["job"]["result"] == {"imported": 3}
    assert states_in_order(w, job_id) == ["queued", "processing", "complete"]


def test_a_failing_job_is_reported_failed_with_what_failed(server, queue, sender, worker, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    w = watch(server, reg)
    worker()
    enqueue(queue, rq_tasks.import_rows, 5, fail_at=2, gateway_job=reg["job"]["external_id"], sender=sender)
    failed = w.wait_for(job_frame(reg["job"]["id"], state="failed"))
    assert failed["job"]["error"] == {"code": "ValueError", "message": "Row 2: missing email", "retryable": True}
    assert states_in_order(w, reg["job"]["id"])[-2:] == ["processing", "failed"]


def test_an_rq_retry_is_the_next_attempt(server, queue, sender, worker, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    w = watch(server, reg)
    worker()
    enqueue(queue, rq_tasks.flaky, f"first-{uuid.uuid4().hex}", retry=Retry(max=1), gateway_job=reg["job"]["external_id"], sender=sender)
    done = w.wait_for(job_frame(reg["job"]["id"], state="complete"), timeout=30)
    assert done["job"]["attempt"] == 2 and done["job"]["result"] == {"value": "ok on retry"}
    assert "failed" in states_in_order(w, reg["job"]["id"])


def test_positions_follow_the_queue(server, queue, sender, worker, broker_url, queue_name):
    """Five jobs behind a busy worker read 1..5 of 5, and move up as the worker takes them."""
    blocker = register(server.url, "worker", queue=queue_name)
    regs = [register(server.url, "worker", queue=queue_name) for _ in range(5)]
    keys = [f"go-{uuid.uuid4().hex}" for _ in range(6)]
    w = Watcher(server.url)
    for reg in [blocker, *regs]:
        w.subscribe(reg["job"]["id"], reg["token"])
    worker()
    enqueue(queue, rq_tasks.import_rows, 2, go=keys[0], gateway_job=blocker["job"]["external_id"], sender=sender)
    w.wait_for(job_frame(blocker["job"]["id"], state="processing"))
    for reg, key in zip(regs, keys[1:]):
        enqueue(queue, rq_tasks.import_rows, 2, go=key, gateway_job=reg["job"]["external_id"], sender=sender)
    w.wait_for_all(*(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=5) for i, r in enumerate(regs, 1)))
    go(broker_url, keys[0])
    w.wait_for_all(job_frame(regs[0]["job"]["id"], state="processing"),
                   *(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=4) for i, r in enumerate(regs[1:], 1)))
    for key in keys[1:]:
        go(broker_url, key)
    w.wait_for_all(*(job_frame(r["job"]["id"], state="complete") for r in regs), timeout=30)
