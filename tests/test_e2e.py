"""Through a real gunicorn server (2 gevent workers) over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid

import requests

from tests.conftest import API_KEY, register
from tests.signing import STANDARD_SECRET, STRIPE_SECRET, standard_body, standard_headers, stripe_event, stripe_headers

KEY = {"Authorization": f"Bearer {API_KEY}"}


def get_job(server, job_id, token):
    return requests.get(f"{server.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()


def test_standard_job_lifecycle(server):
    reg = register(server.url, label="Import customers.csv", queue="imports-" + uuid.uuid4().hex[:6])
    job, token = reg["job"], reg["token"]
    assert job["queue"]["position"] == 1
    for state, extra in [
        ("processing", {"progress": {"current": 1240, "total": 4000, "step": "importing rows"}}),
        ("complete", {"result": {"url": "https://example.com/report.csv"}}),
    ]:
        body = standard_body(job["external_id"], state, **extra)
        r = requests.post(f"{server.url}/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "accepted"}
        now = get_job(server, job["id"], token)
        assert now["state"] == state
    assert now["result"] == {"url": "https://example.com/report.csv"} and now["progress"] is None and now["version"] == 3


def test_stripe_payment_intent_lifecycle(server):
    pi = "pi_" + uuid.uuid4().hex[:14]
    reg = register(server.url, "stripe", external_id=pi)
    base = int(time.time())
    for offset, etype, expected in [(0, "payment_intent.created", "queued"), (1, "payment_intent.processing", "processing"), (2, "payment_intent.payment_failed", "failed")]:
        obj = {"id": pi, "object": "payment_intent", "last_payment_error": {"code": "card_declined", "message": "Your card was declined."}}
        body = stripe_event(etype, obj, created=base + offset)
        r = requests.post(f"{server.url}/webhooks/stripe", data=body, headers=stripe_headers(STRIPE_SECRET, body), timeout=10)
        assert r.status_code == 200, r.text
        assert get_job(server, reg["job"]["id"], reg["token"])["state"] == expected
    failed = get_job(server, reg["job"]["id"], reg["token"])
    assert failed["error"] == {"code": "card_declined", "message": "Your card was declined.", "retryable": True}


def test_chunked_body_over_limit_is_413(server):
    def chunks():
        for _ in range(1100):
            yield b"x" * 1024

    r = requests.post(f"{server.url}/webhooks/worker", data=chunks(), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_identical_deliveries_at_the_same_instant(server):
    """Two (and twelve) identical deliveries racing: exactly one applied, the rest duplicates, never a 500."""
    reg = register(server.url)
    body = standard_body(reg["job"]["external_id"], "processing", progress={"current": 1, "total": 2})
    headers = standard_headers(STANDARD_SECRET, body)
    results: list[requests.Response] = []
    barrier = threading.Barrier(12)

    def fire():
        session = requests.Session()
        barrier.wait()
        results.append(session.post(f"{server.url}/webhooks/worker", data=body, headers=headers, timeout=30))

    threads = [threading.Thread(target=fire) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.json()["status"] for r in results)
    assert all(r.status_code == 200 for r in results), [r.status_code for r in results]
    assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 11
    job = get_job(server, reg["job"]["id"], reg["token"])
    assert job["state"] == "processing" and job["version"] == 2


def test_concurrent_distinct_events_fold_to_the_same_job(server):
    """Out-of-order events racing through both workers end where the fold says."""
    reg = register(server.url)
    ext = reg["job"]["external_id"]
    bodies = [standard_body(ext, "processing", f"2026-11-28T12:00:{i:02d}.000Z", progress={"current": i, "total": 20}) for i in range(1, 20)]
    bodies.append(standard_body(ext, "queued", "2026-11-28T12:00:00.500Z"))
    barrier = threading.Barrier(len(bodies))
    codes = []

    def fire(body):
        barrier.wait()
        codes.append(requests.post(f"{server.url}/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=30).status_code)

    threads = [threading.Thread(target=fire, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * len(bodies)
    job = get_job(server, reg["job"]["id"], reg["token"])
    assert job["state"] == "processing" and job["progress"]["current"] == 19
    assert job["state_changed_at"] == "2026-11-28T12:00:01.000Z"


def test_health_and_metrics(server):
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert "gateway_webhooks_total" in text
