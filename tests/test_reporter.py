"""The reporter for the integrator's own workers, and the RQ example that uses it, against a real gateway."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from gateway.reporter import Reporter, ReportError
from tests.conftest import API_KEY, register
from tests.receiver import Receiver
from tests.servers import free_port
from tests.signing import STANDARD_SECRET

API = {"Authorization": f"Bearer {API_KEY}"}


def job(server, job_id) -> dict[str, Any]:
    return requests.get(f"{server.url}/api/jobs/{job_id}", headers=API, timeout=10).json()


def trace(server, job_id) -> list[dict[str, Any]]:
    return requests.get(f"{server.url}/api/jobs/{job_id}/trace", headers=API, timeout=10).json()["timeline"]


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_signed_reports_drive_a_job_through_its_states(server):
    reg = register(server.url, "worker")
    job_id, ext = reg["job"]["id"], reg["job"]["external_id"]
    reporter = Reporter(server.url, STANDARD_SECRET, "worker").for_job(ext)
    assert reporter.queued(position=2, total=5, queue="imports") == {"status": "accepted"}
    assert job(server, job_id)["queue"]["position"] == 2
    reporter.progress(1240, 4000, "importing rows")
    j = job(server, job_id)
    assert (j["state"], j["progress"]) == ("processing", {"current": 1240, "total": 4000, "step": "importing rows"})
    reporter.complete({"url": "https://example.com/report.csv"})
    j = job(server, job_id)
    assert (j["state"], j["result"]) == ("complete", {"url": "https://example.com/report.csv"})


def test_signed_failure_carries_code_message_and_retryable(server):
    reg = register(server.url, "worker")
    Reporter(server.url, STANDARD_SECRET, "worker").failed(reg["job"]["external_id"], "bad_row", "Row 1,241: missing email", retryable=False)
    assert job(server, reg["job"]["id"])["error"] == {"code": "bad_row", "message": "Row 1,241: missing email", "retryable": False}


def test_api_key_reports_name_the_job_by_its_id(server):
    reg = register(server.url, "worker")
    reporter = Reporter.with_api_key(server.url, API_KEY).for_job(reg["job"]["id"])
    answer = reporter.progress(1, 3, "step one")
    assert answer["status"] == "accepted" and answer["job"]["state"] == "processing"
    reporter.complete()
    assert job(server, reg["job"]["id"])["state"] == "complete"


def test_transient_failures_are_retried_with_the_same_id_and_fresh_signatures(receiver):
    receiver.respond = lambda n, req: {1: (503, "busy"), 2: (502, "bad gateway")}.get(n, (200, json.dumps({"status": "accepted"})))
    reporter = Reporter(receiver.url, STANDARD_SECRET, "worker", backoff=0.01)
    assert reporter.progress("import-7", 5, 10) == {"status": "accepted"}
    got = receiver.wait_for(3)
    assert [g.status for g in got] == [503, 502, 200]
    assert len({g.headers["webhook-id"] for g in got}) == 1  # one logical event
    assert len({g.body for g in got}) == 1  # occurred_at is the call's, not the try's
    for g in got:
        body = Webhook(STANDARD_SECRET).verify(g.body, g.headers)
        assert g.path == "/webhooks/worker" and body["external_id"] == "import-7" and body["state"] == "processing"


def test_a_lost_acknowledgement_is_retried_and_the_gateway_counts_it_once(server, receiver):
    """A proxy that lets the first report reach the gateway but loses its answer (502)."""
    reg = register(server.url, "worker")

    def proxy(n: int, req) -> tuple[Any, ...]:
        forwarded = requests.post(server.url + req.path, data=req.body, headers={k: v for k, v in req.headers.items() if k.startswith("webhook-") or k == "content-type"}, timeout=10)
        return (502, "lost") if n == 1 else (forwarded.status_code, forwarded.content)

    receiver.respond = proxy
    answer = Reporter(receiver.url, STANDARD_SECRET, "worker", backoff=0.01).progress(reg["job"]["external_id"], 1, 2)
    assert answer == {"status": "duplicate"}  # the first try had been committed
    deliveries = [e for e in trace(server, reg["job"]["id"]) if e["what"] == "delivery"]
    assert [d["decision"] for d in deliveries] == ["applied", "duplicate"]
    assert job(server, reg["job"]["id"])["progress"] == {"current": 1, "total": 2, "step": None}


def test_a_refusal_is_not_retried(receiver):
    receiver.respond = lambda n, req: (401, json.dumps({"error": {"code": "invalid_signature"}}))
    with pytest.raises(ReportError) as info:
        Reporter(receiver.url, STANDARD_SECRET, "worker", backoff=0.01).complete("import-1")
    # the receiver records a request once it has answered it; the reporter is done, so one is final
    assert info.value.status == 401 and len(receiver.wait_for(1)) == 1


def test_an_unreachable_gateway_raises_after_the_retries():
    reporter = Reporter(f"http://127.0.0.1:{free_port()}", STANDARD_SECRET, "worker", retries=2, backoff=0.01, timeout=2)
    with pytest.raises(ReportError, match="after 3 tries"):
        reporter.queued("import-1")


def test_reporter_needs_a_secret_and_source_or_an_api_key():
    with pytest.raises(ValueError):
        Reporter("http://127.0.0.1:1", STANDARD_SECRET)


# -- the RQ example ----------------------------------------------------------------------------------


def run_example(server: Any, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    """Register a job, enqueue the example import through the RQ integration, run it with a real
    GatewayWorker (a forked work horse, as ``rq worker -w`` runs it); the gateway's job, the RQ job."""
    import rq  # a declared test dependency: missing, this fails rather than skips
    from redis import Redis

    from examples.rq_import.tasks import import_customers
    from gateway.integrations.rq import GatewayWorker, enqueue
    from gateway.integrations.sender import Sender

    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        redis.ping()
    except Exception as exc:
        if os.environ.get("GATEWAY_REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required (GATEWAY_REQUIRE_REDIS=1) but unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    sender = Sender(Reporter(server.url, STANDARD_SECRET, "worker"))
    queue = rq.Queue(f"imports-test-{uuid.uuid4().hex[:8]}", connection=redis)
    reg = register(server.url, "worker", queue=queue.name)
    try:
        rq_job = enqueue(queue, import_customers, rows, gateway_job=reg["job"]["external_id"], sender=sender)
        assert sender.flush(30)
        GatewayWorker([queue], connection=redis, sender=sender).work(burst=True)
        assert sender.flush(30)
        return job(server, reg["job"]["id"]), rq_job
    finally:
        queue.delete(delete_jobs=True)


def test_example_import_through_a_real_rq_worker_reports_progress_then_complete(server):
    j, rq_job = run_example(server, [{"email": f"c{i}@example.com"} for i in range(250)])
    assert rq_job.get_status(refresh=True) == "finished", rq_job.latest_result()
    assert (j["state"], j["result"]) == ("complete", {"imported": 250})
    applied = [e for e in trace(server, j["id"]) if e["what"] == "delivery" and e["decision"] == "applied"]
    assert len(applied) >= 1 + 1 + 1 + 3 + 1  # queued, processing, reading file, rows 100 / 200 / 250, complete


def test_example_import_reports_a_bad_row_as_a_retryable_failure(server):
    j, rq_job = run_example(server, [{"email": "a@example.com"}, {"email": ""}])
    assert rq_job.get_status(refresh=True) == "failed"
    assert j["error"] == {"code": "BadRow", "message": "Row 2: missing email", "retryable": True}
