"""Forwarding (CONTRACT §9): a job change owes each matching endpoint a message, written to the
outbox in the same transaction as the change (SQLite and PostgreSQL through the db_url fixture)."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from gateway.models import OutboxItem
from gateway.owed import FORWARD
from tests.conftest import API_KEY, register
from tests.gwapp import gw_of, make_app, post_standard
from tests.signing import STANDARD_SECRET, iso_now

ENDPOINT_SECRET = "whsec_" + "Zm9yd2FyZC1zZWNyZXQtZm9yLXRoZS10ZXN0cy0wMDE="
ENDPOINTS = """
[endpoints.backend]
url = "http://user:pw@127.0.0.1:9/hooks"
secret_env = "BACKEND_SECRET"

[endpoints.done_only]
url = "http://127.0.0.1:9/done"
secret_env = "BACKEND_SECRET"
events = ["job.complete"]
"""


def forwarded(app, job_id):
    with gw_of(app).store.reading() as session:
        rows = session.scalars(select(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.job_id == job_id)
                               .order_by(OutboxItem.id)).all()
    return [(row.target, row.payload["type"], row.payload["version"], row.payload["webhook_id"]) for row in rows]


def test_every_version_owes_a_message_to_each_matching_endpoint(db_url, tmp_path):
    app = make_app(db_url, tmp_path, ENDPOINTS, BACKEND_SECRET=ENDPOINT_SECRET)
    client = app.test_client()
    ext = "fwd-" + uuid.uuid4().hex[:10]
    job = register(client, "worker", ext)["job"]
    assert post_standard(client, "worker", STANDARD_SECRET, ext, "processing", occurred_at=iso_now(1), progress={"current": 1, "total": 4}).status_code == 200
    assert post_standard(client, "worker", STANDARD_SECRET, ext, "processing", occurred_at=iso_now(2), progress={"current": 2, "total": 4}).status_code == 200
    assert post_standard(client, "worker", STANDARD_SECRET, ext, "complete", occurred_at=iso_now(3)).status_code == 200
    rows = forwarded(app, job["id"])
    backend = [r for r in rows if r[0] == "backend"]
    versions = [r[2] for r in backend]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert [r[1] for r in backend][-3:] == ["job.processing", "job.progress", "job.complete"]
    assert all(r[3] == f"msg_{job['id']}_v{r[2]}" for r in backend)
    assert [r[1] for r in rows if r[0] == "done_only"] == ["job.complete"]
    assert all("pw" not in (r[0] or "") for r in rows)
    # the last message carries the job as a poll shows it (on PostgreSQL these versions were
    # written by the fast path, whose row the message is made from)
    with gw_of(app).store.reading() as session:
        last = session.scalars(select(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.job_id == job["id"], OutboxItem.target == "backend")
                               .order_by(OutboxItem.id.desc())).first()
    polled = client.get(f"/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    assert last is not None and last.payload["data"] == polled


def test_no_endpoints_owe_nothing(db_url, tmp_path):
    app = make_app(db_url, tmp_path)
    client = app.test_client()
    ext = "fwd-" + uuid.uuid4().hex[:10]
    job = register(client, "worker", ext)["job"]
    assert post_standard(client, "worker", STANDARD_SECRET, ext, "complete").status_code == 200
    assert forwarded(app, job["id"]) == []


def test_messages_reach_the_endpoint_signed_and_in_order(db_url, tmp_path):
    from standardwebhooks.webhooks import Webhook

    from tests.receiver import Receiver

    receiver = Receiver().start()
    try:
        endpoints = f"""
[endpoints.backend]
url = "{receiver.url}/hooks"
secret_env = "BACKEND_SECRET"
"""
        app = make_app(db_url, tmp_path, endpoints, BACKEND_SECRET=ENDPOINT_SECRET)
        client = app.test_client()
        ext = "fwd-" + uuid.uuid4().hex[:10]
        job = register(client, "worker", ext)["job"]
        # shuffled and duplicated: the versions still go out in order, once each
        for state, at in [("complete", 3), ("processing", 1), ("complete", 3), ("processing", 1)]:
            assert post_standard(client, "worker", STANDARD_SECRET, ext, state, occurred_at=iso_now(at)).status_code == 200
        app.extensions["forward_senders"]["backend"].drain()
        got = [r for r in receiver.requests if job["id"] in r.body.decode()]
        versions = []
        for r in got:
            message = Webhook(ENDPOINT_SECRET).verify(r.body, {k.lower(): v for k, v in r.headers.items()})
            assert message["data"]["id"] == job["id"]
            versions.append(message["data"]["version"])
        assert versions == sorted(set(versions)) and len(versions) == len(forwarded(app, job["id"]))
        assert forwarded(app, job["id"])[-1][1] == "job.complete"
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'gateway_forward_total{endpoint="backend",outcome="delivered"}' in metrics
    finally:
        receiver.stop()


def test_a_dead_message_shows_on_the_endpoint_and_is_resent(db_url, tmp_path):
    from tests.gwapp import api
    from tests.receiver import Receiver

    answers = {"status": 500}
    receiver = Receiver(respond=lambda n, req: (answers["status"], b"no")).start()
    try:
        endpoints = f"""
[endpoints.backend]
url = "http://user:secretpw@{receiver.url.removeprefix('http://')}/hooks?token=hidden"
secret_env = "BACKEND_SECRET"
"""
        app = make_app(db_url, tmp_path, endpoints, "forward_retry_for = 0", BACKEND_SECRET=ENDPOINT_SECRET)
        client = app.test_client()
        job = register(client, "worker", "fwd-" + uuid.uuid4().hex[:10])["job"]
        app.extensions["forward_senders"]["backend"].drain()
        listed = client.get("/api/endpoints", headers=api()).get_json()["endpoints"]
        assert listed[0]["name"] == "backend" and listed[0]["dead"] >= 1 and listed[0]["last_failure_at"]
        assert "secretpw" not in str(listed) and "hidden" not in str(listed)
        assert client.get("/api/endpoints").status_code == 401
        from gateway.messages import list_messages

        dead = [m for m in list_messages(gw_of(app).store, endpoint="backend", dead_only=True) if m["job_id"] == job["id"]]
        assert dead and dead[0]["webhook_id"] == f"msg_{job['id']}_v1"
        answers["status"] = 200
        r = client.post(f"/api/messages/{dead[0]['id']}/resend", headers=api())
        assert r.status_code == 200 and r.get_json()["message"]["status"] == "pending"
        app.extensions["forward_senders"]["backend"].drain()
        assert any(q.headers.get("webhook-id") == f"msg_{job['id']}_v1" and q.status == 200 for q in receiver.requests)
        assert client.post("/api/messages/999999999/resend", headers=api()).status_code == 404
        trace = client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_json()
        assert "secretpw" not in str(trace) and "forward" in str(trace)
    finally:
        receiver.stop()
