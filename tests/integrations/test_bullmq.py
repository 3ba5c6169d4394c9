"""BullMQ through Node, a real Queue and Worker on Redis and clients/bullmq's bridge: each job is
reported queued → processing (with progress) → complete or failed, a BullMQ retry is the next
attempt, and a watcher sees it in order. Node and the npm packages are required in CI
(GATEWAY_REQUIRE_NODE=1): missing, the test fails rather than skips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import API_KEY, register
from tests.integrations.conftest import ROOT, go, states_in_order
from tests.relay_helpers import Watcher, job_frame
from tests.signing import STANDARD_SECRET

ON_POSTGRES = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
CLIENT = ROOT / "clients" / "bullmq"


def node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (CLIENT / "node_modules" / "bullmq").is_dir():
        return "clients/bullmq/node_modules is missing (make bullmq-deps)"
    return None


@pytest.fixture
def node() -> str:
    why = node_ready()
    if why:
        if os.environ.get("GATEWAY_REQUIRE_NODE") == "1":
            pytest.fail(f"Node and BullMQ are required (GATEWAY_REQUIRE_NODE=1): {why}")
        pytest.skip(why)
    return shutil.which("node") or "node"


@ON_POSTGRES
def test_bullmq_jobs_are_reported_from_waiting_to_the_end(server, broker_url, node, tmp_path: Path):
    kinds = ["ok", "fail", "retry"]
    queue = f"bull-{uuid.uuid4().hex[:8]}"
    regs = {kind: register(server.url, "worker", queue=queue) for kind in kinds}
    w = Watcher(server.url)
    for reg in regs.values():
        w.subscribe(reg["job"]["id"], reg["token"])
    env = {**os.environ, "REDIS_URL": broker_url, "QUEUE": queue, "GATEWAY_URL": server.url, "WORKER_WEBHOOK_SECRET": STANDARD_SECRET,
           "JOBS": json.dumps([{"ext": regs[k]["job"]["external_id"], "kind": k} for k in kinds])}
    run = subprocess.run([node, "test/scenario.mjs"], cwd=CLIENT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    # the three jobs' frames arrive in no promised order among each other
    ok, failed, retried = w.wait_for_all(job_frame(regs["ok"]["job"]["id"], state="complete"), job_frame(regs["fail"]["job"]["id"], state="failed"),
                                         job_frame(regs["retry"]["job"]["id"], state="complete"), timeout=30)
    assert ok["job"]["result"] == {"imported": 3}
    assert failed["job"]["error"] == {"code": "TypeError", "message": "Row 2: missing email", "retryable": True}
    assert retried["job"]["attempt"] == 2 and retried["job"]["result"] == {"value": "ok on retry"}
    seen_ok = states_in_order(w, regs["ok"]["job"]["id"])
    assert seen_ok[-1] == "complete" and seen_ok == sorted(seen_ok, key=["queued", "processing", "complete"].index)
    # active, then two progress reports: all recorded (a watcher may see them folded into fewer frames)
    timeline = requests.get(f"{server.url}/api/jobs/{regs['ok']['job']['id']}/trace", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()["timeline"]
    processing = [e for e in timeline if e["what"] == "delivery" and e.get("event_type") == "job.processing"]
    assert len(processing) == 3


def test_bridge_reporter_keeps_each_jobs_reports_in_order(node):
    """clients/bullmq/test/reporter.test.mjs under `node --test`: a job's reports reach the gateway
    in the order made with strictly increasing times (BullMQ can restart a retried job within the
    millisecond it failed), and one job's slow report does not hold another's."""
    run = subprocess.run([node, "--test", "test/reporter.test.mjs"], cwd=CLIENT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "# pass 2" in run.stdout


@ON_POSTGRES
def test_positions_follow_the_queue(server, broker_url, node, tmp_path: Path):
    """Five jobs behind a busy worker (one at a time) read 1..5 of 5, and move up as it takes them."""
    queue = f"bull-{uuid.uuid4().hex[:8]}"
    regs = [register(server.url, "worker", queue=queue) for _ in range(6)]
    keys = [f"go-{uuid.uuid4().hex}" for _ in regs]
    blocker, behind = regs[0], regs[1:]
    w = Watcher(server.url)
    for reg in regs:
        w.subscribe(reg["job"]["id"], reg["token"])
    env = {**os.environ, "REDIS_URL": broker_url, "QUEUE": queue, "GATEWAY_URL": server.url, "WORKER_WEBHOOK_SECRET": STANDARD_SECRET,
           "JOBS": json.dumps([{"ext": r["job"]["external_id"], "kind": "wait", "go": k} for r, k in zip(regs, keys, strict=True)])}
    log = (tmp_path / "scenario.log").open("w")
    run = subprocess.Popen([node, "test/scenario.mjs"], cwd=CLIENT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        w.wait_for_all(job_frame(blocker["job"]["id"], state="processing"),
                       *(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=5) for i, r in enumerate(behind, 1)), timeout=30)
        go(broker_url, keys[0])  # the worker finishes the blocker and takes the first of the five
        w.wait_for_all(job_frame(behind[0]["job"]["id"], state="processing"),
                       *(job_frame(r["job"]["id"], state="queued", queue__position=i, queue__total=4) for i, r in enumerate(behind[1:], 1)),
                       timeout=30)
        for key in keys[1:]:
            go(broker_url, key)
        w.wait_for_all(*(job_frame(r["job"]["id"], state="complete") for r in behind), timeout=30)
        assert run.wait(30) == 0, (tmp_path / "scenario.log").read_text()[-2000:]
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
        w.close()
