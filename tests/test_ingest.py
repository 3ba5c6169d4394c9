"""Every row of the contract's webhook status table, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import select

from gateway.models import Delivery, Event
from tests.conftest import make_config, register
from tests.signing import STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, standard_body, standard_headers, stripe_event, stripe_headers


def post_standard(client, body: str, secret: str = STANDARD_SECRET, source: str = "worker", **kw):
    return client.post(f"/webhooks/{source}", data=body, headers=standard_headers(secret, body, **kw))


def deliveries(app, **where):
    store = app.extensions["gateway"].store
    with store.reading() as s:
        q = select(Delivery)
        for k, v in where.items():
            q = q.where(getattr(Delivery, k) == v)
        return s.scalars(q).all()


def test_unknown_source_is_404_and_never_stored(app, client):
    tag = "nosuch" + uuid.uuid4().hex[:6]
    r = client.post(f"/webhooks/{tag}", data=b"{}")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "unknown_source"
    assert deliveries(app, source=tag) == []  # counted in gateway_webhooks_total{source="_unknown"} only


def test_body_over_limit_is_413_before_verification(app, client):
    big = b"x" * (1024 * 1024 + 1)
    r = client.post("/webhooks/worker", data=big, headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("mutate", ["no_headers", "bad_signature", "tampered_body", "wrong_secret", "stale", "future", "garbage_signature"])
def test_bad_signatures_are_401_and_store_nothing_but_a_rejection(app, client, mutate):
    ext = "ext-" + uuid.uuid4().hex[:8]
    body = standard_body(ext, "processing")
    headers = standard_headers(STANDARD_SECRET, body)
    if mutate == "no_headers":
        headers = {}
    elif mutate == "bad_signature":
        headers["webhook-signature"] = "v1," + "A" * 44
    elif mutate == "tampered_body":
        body = body.replace("processing", "complete")
    elif mutate == "wrong_secret":
        headers = standard_headers("whsec_" + "QUJD" * 8, body)
    elif mutate == "stale":
        headers = standard_headers(STANDARD_SECRET, body, ts=time.time() - 301)
    elif mutate == "future":
        headers = standard_headers(STANDARD_SECRET, body, ts=time.time() + 301)
    elif mutate == "garbage_signature":
        headers["webhook-signature"] = "v1,%%%not-base64 v2 ,"
    r = client.post("/webhooks/worker", data=body, headers=headers)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "invalid_signature"
    store = app.extensions["gateway"].store
    with store.reading() as s:
        assert s.scalars(select(Event).where(Event.external_id == ext)).all() == []
    rejected = [d for d in deliveries(app, source="worker", outcome="rejected") if d.request_id == r.headers["X-Request-ID"]]
    assert len(rejected) == 1 and rejected[0].status == 401 and rejected[0].job_id is None
    assert rejected[0].external_id in (None, ext)  # only what the body claims, when it reads as an event


def test_rotation_any_active_secret_verifies(client):
    job = register(client)["job"]
    r = post_standard(client, standard_body(job["external_id"], "processing"), secret=STANDARD_SECRET_2)
    assert r.status_code == 200 and r.get_json() == {"status": "accepted"}


@pytest.mark.parametrize(
    "body,code",
    [
        ("not json", "unparseable_body"),
        ('{"external_id": "x", "occurred_at": "2026-11-28T12:00:00Z"}', "missing_state"),
        ('{"external_id": "x", "state": "exploded", "occurred_at": "2026-11-28T12:00:00Z"}', "unknown_state"),
        ('{"external_id": "x", "state": "queued", "occurred_at": "yesterday"}', "unparseable_body"),
        ('{"state": "queued", "occurred_at": "2026-11-28T12:00:00Z"}', "missing_external_id"),
        ('[1, 2]', "unparseable_body"),
        ('{"external_id": "x", "state": "processing", "occurred_at": "2026-11-28T12:00:00Z", "progress": {"current": -1}}', "unparseable_body"),
    ],
)
def test_verified_but_unreadable_is_400_and_recorded(app, client, body, code):
    msg_id = "msg_" + uuid.uuid4().hex
    r = post_standard(client, body, msg_id=msg_id)
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == code
    [d] = deliveries(app, event_id=msg_id)
    assert d.outcome == "invalid" and d.status == 400 and d.reason


def test_stripe_invalid_utf8_body_is_refused_not_500(client):
    body = b'{"id": "evt_\xff"}'
    headers = stripe_headers(STRIPE_SECRET, "x")
    r = client.post("/webhooks/stripe", data=body, headers=headers)
    assert r.status_code == 401


def test_event_type_with_no_state_is_ignored_and_recorded(app, client):
    obj = {"id": "pi_" + uuid.uuid4().hex[:10], "object": "payment_intent"}
    body = stripe_event("payment_intent.partially_funded", obj)
    r = client.post("/webhooks/stripe", data=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert r.status_code == 200 and r.get_json() == {"status": "ignored"}
    [d] = deliveries(app, event_id=json.loads(body)["id"])
    assert d.outcome == "ignored"


def test_accepted_then_duplicate(app, client):
    job = register(client, "stripe", external_id="pi_" + uuid.uuid4().hex[:10])["job"]
    body = stripe_event("payment_intent.processing", {"id": job["external_id"], "object": "payment_intent"})
    headers = stripe_headers(STRIPE_SECRET, body)
    first = client.post("/webhooks/stripe", data=body, headers=headers)
    second = client.post("/webhooks/stripe", data=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert first.get_json() == {"status": "accepted"} and second.get_json() == {"status": "duplicate"}
    assert (first.status_code, second.status_code) == (200, 200)
    store = app.extensions["gateway"].store
    with store.reading() as s:
        assert len(s.scalars(select(Event).where(Event.event_id == json.loads(body)["id"])).all()) == 1
    got = client.get(f"/api/jobs/{job['id']}", headers={"Authorization": "Bearer test-api-key-0123456789"}).get_json()
    assert got["state"] == "processing" and got["version"] == 2


def test_stale_event_is_accepted_and_recorded_not_applied(app, client):
    job = register(client)["job"]
    assert post_standard(client, standard_body(job["external_id"], "processing", "2026-11-28T12:00:02.000Z")).status_code == 200
    r = post_standard(client, standard_body(job["external_id"], "queued", "2026-11-28T12:00:01.000Z"))
    assert r.get_json() == {"status": "accepted"}
    [stale] = [d for d in deliveries(app, job_id=job["id"]) if d.decision == "stale"]
    assert stale.state_after == "processing"


def test_database_unavailable_is_503_with_retry_after(tmp_path):
    from gateway.app import create_app

    config = make_config("postgresql+psycopg://postgres@127.0.0.1:9/nowhere", tmp_path)
    client = create_app(config, background=False).test_client()
    body = standard_body("ext-1", "processing")
    r = client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    assert r.status_code == 503
    assert r.headers["Retry-After"].isdigit()
    assert r.get_json()["error"]["code"] == "unavailable"
    assert client.get("/readyz").status_code == 503


def test_webhook_before_registration_is_adopted(client):
    ext = "early-" + uuid.uuid4().hex[:8]
    r = post_standard(client, standard_body(ext, "processing", progress={"current": 3, "total": 10}))
    assert r.get_json() == {"status": "accepted"}
    job = register(client, external_id=ext)["job"]
    assert job["state"] == "processing" and job["progress"] == {"current": 3, "total": 10, "step": None}


def test_auto_register_source_creates_the_job(client, auth):
    ext = "auto-" + uuid.uuid4().hex[:8]
    assert post_standard(client, standard_body(ext, "queued"), source="auto").status_code == 200
    again = register(client, "auto", external_id=ext)
    assert again["job"]["state"] == "queued"
