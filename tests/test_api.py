"""The jobs API: registration, tokens, reads with ETags, isolation between jobs."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import API_KEY, register
from tests.signing import STANDARD_SECRET, standard_body, standard_headers

KEY = {"Authorization": f"Bearer {API_KEY}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_register_is_idempotent_on_source_and_external_id(client):
    ext = "ext-" + uuid.uuid4().hex[:8]
    first = client.post("/api/jobs", json={"source": "worker", "external_id": ext, "label": "Import"}, headers=KEY)
    second = client.post("/api/jobs", json={"source": "worker", "external_id": ext}, headers=KEY)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json()["job"]["id"] == second.get_json()["job"]["id"]
    job = first.get_json()["job"]
    assert set(job) == {"id", "state", "version", "attempt", "source", "external_id", "label", "queue", "progress", "error", "result", "created_at", "updated_at", "state_changed_at"}
    assert job["state"] == "queued" and job["version"] == 1 and job["attempt"] == 1
    assert job["id"].startswith("job_") and job["created_at"].endswith("Z")


def test_chosen_id_and_id_taken(client):
    jid = "job_" + uuid.uuid4().hex
    r = client.post("/api/jobs", json={"source": "worker", "external_id": "a-" + jid, "id": jid}, headers=KEY)
    assert r.status_code == 201 and r.get_json()["job"]["id"] == jid
    taken = client.post("/api/jobs", json={"source": "worker", "external_id": "b-" + jid, "id": jid}, headers=KEY)
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "id_taken"


@pytest.mark.parametrize(
    "body,code",
    [
        ({}, "missing_source"),
        ({"source": "worker"}, "missing_external_id"),
        ({"source": "nope", "external_id": "x"}, "unknown_source"),
        ({"source": "worker", "external_id": "x", "id": "not-a-job-id"}, "invalid_id"),
        ({"source": "worker", "external_id": 5}, "invalid_external_id"),
    ],
)
def test_register_validation(client, body, code):
    r = client.post("/api/jobs", json=body, headers=KEY)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == code


def test_register_needs_an_api_key(client):
    assert client.post("/api/jobs", json={"source": "worker", "external_id": "x"}).status_code == 401
    token = register(client)["token"]
    r = client.post("/api/jobs", json={"source": "worker", "external_id": "x"}, headers=bearer(token))
    assert r.status_code == 403


def test_get_with_etag_and_304(client):
    reg = register(client)
    jid, token = reg["job"]["id"], reg["token"]
    r = client.get(f"/api/jobs/{jid}", headers=bearer(token))
    assert r.status_code == 200 and r.get_json()["id"] == jid
    etag = r.headers["ETag"]
    assert client.get(f"/api/jobs/{jid}", headers={**bearer(token), "If-None-Match": etag}).status_code == 304
    body = standard_body(reg["job"]["external_id"], "processing")
    client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    changed = client.get(f"/api/jobs/{jid}", headers={**bearer(token), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag and changed.get_json()["version"] == 2


def test_token_in_query_string_on_get(client):
    reg = register(client)
    assert client.get(f"/api/jobs/{reg['job']['id']}?token={reg['token']}").status_code == 200


def test_unknown_job_is_404_json(client):
    jid = "job_" + uuid.uuid4().hex
    r = client.get(f"/api/jobs/{jid}", headers=KEY)
    assert r.status_code == 404 and r.get_json() == {"error": {"code": "job_not_found", "message": "no such job (yet)"}}


def test_token_minted_before_registration_sees_404_then_the_job(client):
    jid = "job_" + uuid.uuid4().hex
    r = client.post("/api/tokens", json={"job": jid, "scopes": ["read"]}, headers=KEY)
    assert r.status_code == 201
    token = r.get_json()["token"]
    assert client.get(f"/api/jobs/{jid}", headers=bearer(token)).status_code == 404
    client.post("/api/jobs", json={"source": "worker", "external_id": "x-" + jid, "id": jid}, headers=KEY)
    assert client.get(f"/api/jobs/{jid}", headers=bearer(token)).get_json()["id"] == jid


def test_token_for_one_job_never_reads_another(client):
    a, b = register(client), register(client)
    r = client.get(f"/api/jobs/{b['job']['id']}", headers=bearer(a["token"]))
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    assert client.get(f"/api/jobs/{b['job']['id']}?token={a['token']}").status_code == 403


def test_tampered_expired_and_missing_tokens_are_401(app, client):
    reg = register(client)
    jid = reg["job"]["id"]
    tampered = reg["token"][:-2] + ("AA" if not reg["token"].endswith("AA") else "BB")
    assert client.get(f"/api/jobs/{jid}", headers=bearer(tampered)).status_code == 401
    assert client.get(f"/api/jobs/{jid}").status_code == 401
    expired, _ = app.extensions["gateway"].auth.issue(jid, ttl=1)
    time.sleep(1.1)  # expiry is wall-clock time; nothing to await instead
    r = client.get(f"/api/jobs/{jid}", headers=bearer(expired))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "token_expired"


def test_read_scope_cannot_retry(client):
    reg = register(client)
    jid = reg["job"]["id"]
    read_only = client.post("/api/tokens", json={"job": jid, "scopes": ["read"]}, headers=KEY).get_json()["token"]
    assert client.post(f"/api/jobs/{jid}/retry", headers=bearer(read_only)).status_code == 403


def test_browser_token_cannot_read_trace(client):
    reg = register(client)
    assert client.get(f"/api/jobs/{reg['job']['id']}/trace", headers=bearer(reg["token"])).status_code == 403
    assert client.get(f"/api/jobs/{reg['job']['id']}/trace", headers=KEY).status_code == 200


def test_retry_only_for_failed_and_retryable(client):
    reg = register(client)
    jid, ext = reg["job"]["id"], reg["job"]["external_id"]
    assert client.post(f"/api/jobs/{jid}/retry", headers=bearer(reg["token"])).status_code == 409
    body = standard_body(ext, "failed", error={"code": "bad_row", "message": "Row 3", "retryable": True})
    client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    r = client.post(f"/api/jobs/{jid}/retry", headers=bearer(reg["token"]))
    assert r.status_code == 202 and r.get_json()["state"] == "queued" and r.get_json()["attempt"] == 2
    again = client.post(f"/api/jobs/{jid}/retry", headers=bearer(reg["token"]))
    assert again.status_code == 409

    other = register(client)
    body = standard_body(other["job"]["external_id"], "failed", error={"code": "fatal", "retryable": False})
    client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    r = client.post(f"/api/jobs/{other['job']['id']}/retry", headers=bearer(other["token"]))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_retryable"


def test_worker_events_dedup_on_event_id(client):
    reg = register(client, "api")
    jid = reg["job"]["id"]
    body = {"state": "processing", "occurred_at": "2026-11-28T12:00:00Z", "progress": {"current": 5, "total": 10}, "event_id": "e1"}
    first = client.post(f"/api/jobs/{jid}/events", json=body, headers=KEY)
    second = client.post(f"/api/jobs/{jid}/events", json=body, headers=KEY)
    assert first.status_code == 200 and first.get_json()["status"] == "accepted"
    assert second.get_json()["status"] == "duplicate"
    assert second.get_json()["job"]["progress"] == {"current": 5, "total": 10, "step": None}
    missing = client.post(f"/api/jobs/job_{uuid.uuid4().hex}/events", json=body, headers=KEY)
    assert missing.status_code == 404


def test_non_json_and_wrong_method_are_json_errors(client):
    r = client.post("/api/jobs", data=b"\xff\xfe", headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_json"
    r = client.delete("/api/jobs")
    assert r.status_code == 405 and "error" in r.get_json()
    r = client.get("/webhooks/worker")
    assert r.status_code == 405 and "error" in r.get_json()
