"""Celery through a real worker process and Redis broker: every task that carries a gateway job
is reported queued (with its position) → processing (with progress) → complete or failed, and
a browser-side watcher (a real WebSocket client) sees it in that order."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import API_KEY, register
from tests.integrations.conftest import PY, go, reported, start, states_in_order, stop, watch, worker_env
from tests.loadgen import wait_for
from tests.relay_helpers import Watcher, job_frame
from tests.servers import Server

ON_POSTGRES = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


@pytest.fixture
def tasks(server: Server, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test tasks module, its Celery app pointed at this test's broker and gateway."""
    for key, value in worker_env(server.url, broker_url).items():
        monkeypatch.setenv(key, value)
    import tests.integrations.celery_tasks as module  # configured once per test process (one server, one broker)

    return module


@pytest.fixture
def worker(server: Server, broker_url: str, queue_name: str, tmp_path: Path) -> Any:
    """A function starting one real Celery worker (solo pool) on this test's queue."""
    procs = []

    def run() -> None:
        cmd = [PY, "-m", "celery", "-A", "tests.integrations.celery_tasks", "worker", "-Q", queue_name, "-P", "solo",
               "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info"]
        procs.append(start(cmd, worker_env(server.url, broker_url), tmp_path / "celery.log"))

    yield run
    for proc in procs:
        stop(proc)


@ON_POSTGRES
def test_a_task_is_reported_from_publish_to_complete(server, tasks, worker, broker_url, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    job_id, key = reg["job"]["id"], f"go-{uuid.uuid4().hex}"
    w = watch(server, reg)
    tasks.import_rows.apply_async((3,), {"go": key}, headers={"gateway_job": reg["job"]["external_id"]}, queue=queue_name)
    wait_for(lambda: reported(server, job_id, "queued"), 15, "the queued report of the publish")
    worker()
    w.wait_for(job_frame(job_id, state="processing", progress__current=1, progress__total=3))
    go(broker_url, key)
    done = w.wait_for(job_frame(job_id, state="complete"))
    assert done["job"]["result"] == {"imported": 3}
    assert states_in_order(w, job_id) == ["queued", "processing", "complete"]


@ON_POSTGRES
def test_a_failing_task_is_reported_failed_with_what_failed(server, tasks, worker, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    w = watch(server, reg)
    worker()
    tasks.import_rows.apply_async((5,), {"fail_at": 2}, headers={"gateway_job": reg["job"]["external_id"]}, queue=queue_name)
    failed = w.wait_for(job_frame(reg["job"]["id"], state="failed"))
    assert failed["job"]["error"] == {"code": "ValueError", "message": "Row 2: missing email", "retryable": True}
    assert states_in_order(w, reg["job"]["id"])[-2:] == ["processing", "failed"]


@ON_POSTGRES
def test_a_celery_retry_is_the_next_attempt(server, tasks, worker, broker_url, queue_name):
    reg = register(server.url, "worker", queue=queue_name)
    job_id, key = reg["job"]["id"], f"go-{uuid.uuid4().hex}"
    w = watch(server, reg)
    worker()
    tasks.flaky.apply_async((), {"go": key}, headers={"gateway_job": reg["job"]["external_id"]}, queue=queue_name)
    w.wait_for(job_frame(job_id, state="processing", attempt=1))
    go(broker_url, key)
    done = w.wait_for(job_frame(job_id, state="complete"))
    assert done["job"]["attempt"] == 2 and done["job"]["result"] == {"value": "ok on retry"}
    # the first attempt's failure was reported as a retry, then the second attempt queued and ran
    assert states_in_order(w, job_id)[-1] == "complete" and "processing" in states_in_order(w, job_id)


@ON_POSTGRES
def test_positions_follow_the_broker(server, tasks, worker, broker_url, queue_name):
    """Five tasks behind a busy worker read 1..5 of 5, and move up as the worker takes them."""
    blocker = register(server.url, "worker", queue=queue_name)
    regs = [register(server.url, "worker", queue=queue_name) for _ in range(5)]
    keys = [f"go-{uuid.uuid4().hex}" for _ in range(6)]
    w = Watcher(server.url)
    for reg in [blocker, *regs]:
        w.subscribe(reg["job"]["id"], reg["token"])
    worker()
    tasks.import_rows.apply_async((2,), {"go": keys[0]}, headers={"gateway_job": blocker["job"]["external_id"]}, queue=queue_name)
    w.wait_for(job_frame(blocker["job"]["id"], state="processing"))
    for reg, key in zip(regs, keys[1:]):
        tasks.import_rows.apply_async((2,), {"go": key}, headers={"gateway_job": reg["job"]["external_id"]}, queue=queue_name)
    w.wait_for_all(*(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=5) for i, r in enumerate(regs, 1)))
    go(broker_url, keys[0])  # the worker finishes the blocker and takes the first of the five
    w.wait_for_all(job_frame(regs[0]["job"]["id"], state="processing"),
                   *(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=4) for i, r in enumerate(regs[1:], 1)))
    for key in keys[1:]:
        go(broker_url, key)
    w.wait_for_all(*(job_frame(r["job"]["id"], state="complete") for r in regs), timeout=30)


def test_a_gateway_that_is_down_never_fails_or_holds_the_task(tmp_path, pg_url, broker_url, caplog):
    """The task runs to its end while the gateway is down; its reports arrive once it is back."""
    from celery import Celery

    from gateway.integrations.celery import install, report_progress
    from gateway.integrations.sender import Sender
    from gateway.reporter import Reporter
    from tests.conftest import ARTIFACTS, server_env, write_config
    from tests.signing import STANDARD_SECRET

    down = Server(server_env(pg_url, write_config(tmp_path / "gw.toml")), workers=1, log_path=ARTIFACTS / "celery-down.log")
    app = Celery("down", broker=broker_url)
    app.conf.task_always_eager = True
    sender = Sender(Reporter(down.url, STANDARD_SECRET, "worker", retries=40, backoff=0.05, max_backoff=0.25, timeout=2))
    install(app, sender)

    @app.task
    def work() -> dict[str, int]:
        report_progress(1, 2, "halfway")
        return {"done": 2}

    down.start()
    reg = register(down.url, "worker")
    down.stop()  # the gateway goes down with the job registered
    assert work.apply_async(headers={"gateway_job": reg["job"]["external_id"]}).get() == {"done": 2}
    assert sender._queue.unfinished_tasks > 0  # the task is done; its reports still wait for the gateway
    down.start()
    try:
        assert sender.flush(60)
        job = requests.get(f"{down.url}/api/jobs/{reg['job']['id']}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
        assert (job["state"], job["result"]) == ("complete", {"done": 2})
    finally:
        down.stop()


def test_a_report_that_cannot_get_through_is_dropped_with_a_log_line(caplog):
    from gateway.integrations.sender import Sender
    from gateway.reporter import Reporter
    from tests.servers import free_port
    from tests.signing import STANDARD_SECRET

    sender = Sender(Reporter(f"http://127.0.0.1:{free_port()}", STANDARD_SECRET, "worker", retries=1, backoff=0.01, timeout=1))
    with caplog.at_level(logging.WARNING, logger="gateway.integrations"):
        sender.submit("ext-lost", "processing")
        assert sender.flush(30)
    assert any("dropped" in r.getMessage() and getattr(r, "external_id", None) == "ext-lost" for r in caplog.records)
