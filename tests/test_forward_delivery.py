"""``delivery.<source>`` messages (CONTRACT §9): a verified provider delivery passed on verbatim to
the endpoints that want it, signed by the gateway with Standard Webhooks over the exact bytes,
the provider's own signature left to verify (SQLite and PostgreSQL through db_url)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
import stripe
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from gateway.db import make_engine
from gateway.ids import utcnow
from gateway.models import Delivery, OutboxItem
from gateway.support import prune
from tests.conftest import ARTIFACTS, register, server_env, write_config
from tests.gwapp import api, gw_of, make_app
from tests.receiver import Received, Receiver
from tests.servers import Server
from tests.signing import STANDARD_SECRET, STRIPE_SECRET, iso_now, standard_body, standard_headers, stripe_event, stripe_headers

ENDPOINT_SECRET = "whsec_" + "ZGVsaXZlcnktZm9yd2FyZC1zZWNyZXQtZm9yLXRlc3Rz"


def endpoints(url: str, events: str = '["job.*", "delivery.stripe"]', extra: str = "") -> str:
    return f"""
[endpoints.backend]
url = "{url}/hooks"
secret_env = "BACKEND_SECRET"
events = {events}
{extra}
"""


def wait_for(receiver: Receiver, pred: Callable[[Received], bool], timeout: float = 30) -> Received:
    """The first request ``pred`` accepts, waiting on the receiver's condition (no sleeping)."""
    deadline = time.monotonic() + timeout
    with receiver._cond:
        while True:
            hit = next((r for r in receiver.requests if pred(r)), None)
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching request in {timeout}s; got {[r.headers.get('webhook-id') for r in receiver.requests]}")
            receiver._cond.wait(left)


def delivery_messages(db_url: str, **where: Any) -> list[OutboxItem]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(OutboxItem).where(OutboxItem.key.like("fwd:%:dlv_%"), *[getattr(OutboxItem, k) == v for k, v in where.items()])).all()
    finally:
        engine.dispose()
    return list(rows)


def delivery_id_of(base: str, job_id: str, event_id: str) -> int:
    rows = requests.get(f"{base}/api/deliveries", params={"job": job_id}, headers=api(), timeout=10).json()["deliveries"]
    return next(r["id"] for r in rows if r["event_id"] == event_id)


def test_a_stripe_delivery_reaches_the_backend_verbatim_through_gunicorn(db_url: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    cfg = write_config(tmp_path / "gateway.toml", extra_sources=endpoints(receiver.url))
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"forward-delivery-{'pg' if 'postgres' in db_url else 'sqlite'}.log"
    srv = Server(server_env(db_url, cfg, BACKEND_SECRET=ENDPOINT_SECRET), log_path=log).start()
    try:
        pi = "pi_" + uuid.uuid4().hex[:20]
        job = register(srv.url, "stripe", pi)["job"]
        body = stripe_event("payment_intent.succeeded", {"id": pi, "object": "payment_intent", "status": "succeeded"})
        event_id = json.loads(body)["id"]
        headers = {
            **stripe_headers(STRIPE_SECRET, body),
            "Authorization": "Bearer provider-side-credential", "Cookie": "session=provider-cookie",
            "X-Forwarded-For": "203.0.113.9", "Connection": "keep-alive, X-Hop", "X-Hop": "connection-only",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        r = requests.post(f"{srv.url}/webhooks/stripe", data=body.encode(), headers=headers, timeout=10)
        assert r.json() == {"status": "accepted"}
        delivery_id = delivery_id_of(srv.url, job["id"], event_id)

        got = wait_for(receiver, lambda q: q.headers.get("webhook-id") == f"dlv_{delivery_id}")
        assert got.body == body.encode()  # the exact bytes
        # the backend's existing Stripe verification keeps working on what it receives…
        event = stripe.Webhook.construct_event(got.body, got.headers["stripe-signature"], STRIPE_SECRET)
        assert event.id == event_id
        # …and the gateway's own signature verifies with any Standard Webhooks library
        assert Webhook(ENDPOINT_SECRET).verify(got.body, got.headers)["id"] == event_id
        assert (got.headers["gateway-source"], got.headers["gateway-job-id"]) == ("stripe", job["id"])
        assert got.headers["content-type"] == "application/json"
        assert got.headers["user-agent"].startswith("Stripe/1.0")
        for name in ("authorization", "cookie", "x-forwarded-for", "x-hop"):
            assert name not in got.headers, name
        assert "provider-side-credential" not in str(got.headers) and "provider-cookie" not in str(got.headers)

        # the job's own message follows through the job.* forwarding, after the delivery that caused it
        complete = wait_for(receiver, lambda q: q.headers.get("webhook-id", "").startswith(f"msg_{job['id']}_v")
                            and json.loads(q.body)["type"] == "job.complete")
        assert receiver.requests.index(got) < receiver.requests.index(complete)

        # the provider's retry of the same event is a duplicate and owes no second message
        again = requests.post(f"{srv.url}/webhooks/stripe", data=body.encode(), headers=stripe_headers(STRIPE_SECRET, body), timeout=10)
        assert again.json() == {"status": "duplicate"}
        assert len(delivery_messages(db_url, job_id=job["id"])) == 1

        # an event that maps to no job state is forwarded too: the backend hears everything
        other = stripe_event("customer.created", {"id": "cus_" + uuid.uuid4().hex[:14], "object": "customer"})
        r = requests.post(f"{srv.url}/webhooks/stripe", data=other.encode(), headers=stripe_headers(STRIPE_SECRET, other), timeout=10)
        assert r.json() == {"status": "ignored"}
        got = wait_for(receiver, lambda q: q.body == other.encode())
        assert stripe.Webhook.construct_event(got.body, got.headers["stripe-signature"], STRIPE_SECRET).type == "customer.created"
        assert got.headers["webhook-id"].startswith("dlv_") and "gateway-job-id" not in got.headers
    finally:
        srv.stop()
        receiver.stop()


def test_a_standard_webhooks_provider_keeps_its_signature_under_gateway_original(db_url: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    try:
        extra = endpoints(receiver.url, '["delivery.worker"]') + endpoints(receiver.url, '["delivery.*"]', 'sources = ["stripe"]').replace("backend", "stripe_only")
        app = make_app(db_url, tmp_path, extra, BACKEND_SECRET=ENDPOINT_SECRET)
        client = app.test_client()
        ext = "dlv-" + uuid.uuid4().hex[:10]
        job = register(client, "worker", ext)["job"]
        body = standard_body(ext, "processing")
        provider = standard_headers(STANDARD_SECRET, body)
        r = client.post("/webhooks/worker", data=body, headers={**provider, "Authorization": "Basic cHJvdmlkZXI6c2VjcmV0"})
        assert r.get_json() == {"status": "accepted"}
        owed = delivery_messages(db_url, job_id=job["id"])
        assert [row.target for row in owed] == ["backend"]  # stripe_only wants no worker deliveries
        with gw_of(app).store.reading() as session:
            stored = session.scalars(select(Delivery).where(Delivery.job_id == job["id"])).one()
            assert stored.body == body.encode() and "Authorization" not in stored.headers
        app.extensions["forward_senders"]["backend"].drain()
        got = wait_for(receiver, lambda q: q.headers.get("gateway-job-id") == job["id"])
        assert got.headers["webhook-id"] == f"dlv_{stored.id}" != provider["webhook-id"]
        original = {k.removeprefix("gateway-original-"): v for k, v in got.headers.items() if k.startswith("gateway-original-")}
        assert original["webhook-id"] == provider["webhook-id"]
        assert Webhook(STANDARD_SECRET).verify(got.body, original)["external_id"] == ext  # the provider's own signature
        assert Webhook(ENDPOINT_SECRET).verify(got.body, got.headers)["external_id"] == ext  # the gateway's
        # a progress report for a job already processing: on PostgreSQL the writer's fast path,
        # with the delivery's id asked for in the middle of its transaction
        progress = standard_body(ext, "processing", occurred_at=iso_now(5), progress={"current": 2, "total": 4})
        assert client.post("/webhooks/worker", data=progress, headers=standard_headers(STANDARD_SECRET, progress)).get_json() == {"status": "accepted"}
        app.extensions["forward_senders"]["backend"].drain()
        second = wait_for(receiver, lambda q: q.body == progress.encode())
        assert Webhook(ENDPOINT_SECRET).verify(second.body, second.headers)["progress"]["current"] == 2
        assert client.get(f"/api/jobs/{job['id']}", headers=api()).get_json()["progress"]["current"] == 2
        with gw_of(app).store.reading() as session:  # this endpoint wants deliveries only: no job.* message
            keys = session.scalars(select(OutboxItem.key).where(OutboxItem.job_id == job["id"], OutboxItem.kind == "forward")
                                   .order_by(OutboxItem.id)).all()
        assert keys == [f"fwd:backend:dlv_{stored.id}", f"fwd:backend:{second.headers['webhook-id']}"]
    finally:
        receiver.stop()


def test_a_delivery_pruned_before_it_was_sent_is_dead_and_says_why(db_url: str, tmp_path: Path) -> None:
    app = make_app(db_url, tmp_path, endpoints("http://127.0.0.1:9", '["delivery.worker"]'), BACKEND_SECRET=ENDPOINT_SECRET)
    client = app.test_client()
    ext = "dlv-" + uuid.uuid4().hex[:10]
    job = register(client, "worker", ext)["job"]
    body = standard_body(ext, "processing")
    assert client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body)).status_code == 200
    store = gw_of(app).store
    assert prune(store, 30, body_days=7, now=utcnow() + timedelta(days=8)).bodies >= 1
    app.extensions["forward_senders"]["backend"].drain()
    (row,) = delivery_messages(db_url, job_id=job["id"])
    assert row.status == "dead" and "pruned" in (row.last_error or "")
    listed = client.get("/api/endpoints", headers=api()).get_json()["endpoints"]
    assert listed[0]["dead"] >= 1


def test_stored_headers_keep_signatures_and_drop_credentials_hop_by_hop_and_secrets() -> None:
    from gateway.recording import stored_headers

    secret = "tok_live_provider_secret_0123456789"
    basic = base64.b64encode(f"beacon:{secret}".encode()).decode()
    kept = stored_headers([
        ("Stripe-Signature", "t=1,v1=abc"), ("Webhook-Signature", "v1,xyz"), ("Content-Type", "application/json"),
        ("Authorization", "Bearer x"), ("Proxy-Authorization", "Basic y"), ("Cookie", "s=1"), ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "timeout=5"), ("X-Beacon-Token", secret),
        ("X-Relay-Auth", f"Basic {basic}"), ("User-Agent", "Stripe/1.0"),
    ], [secret])
    assert kept == {"Stripe-Signature": "t=1,v1=abc", "Webhook-Signature": "v1,xyz", "Content-Type": "application/json", "User-Agent": "Stripe/1.0"}
