"""Issue 13, the findings on ingest (a-e of the hardening task): each test failed on the code before its fix.
The rest are in test_hardening_serving.py."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.models import Delivery, Event, Job
from tests.conftest import API_KEY, register
from tests.signing import STANDARD_SECRET, STRIPE_SECRET, standard_body, standard_headers, stripe_event, stripe_headers

KEY = {"Authorization": f"Bearer {API_KEY}"}
SURROGATE = "\\ud800"  # a JSON escape of a lone UTF-16 surrogate: valid JSON, no UTF-8 encoding


def counts(app: Any) -> tuple[int, int]:
    with app.extensions["gateway"].store.reading() as s:
        return s.scalar(select(func.count()).select_from(Event)), s.scalar(select(func.count()).select_from(Job))


# -- a. lone surrogates (finding 3) ------------------------------------------------------------------


def test_a_lone_surrogate_in_a_signed_standard_label_is_a_400(app, client) -> None:
    job = register(client)["job"]
    body = standard_body(job["external_id"], "processing").replace('"state"', f'"label": "x{SURROGATE}", "state"', 1)
    assert SURROGATE in body
    before = counts(app)
    r = client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "unstorable_value"
    assert counts(app) == before
    again = client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    assert again.status_code == 400  # every provider retry too


def test_a_lone_surrogate_in_a_stripe_object_id_is_a_400(app, client) -> None:
    body = stripe_event("payment_intent.processing", {"id": "pi_PLACEHOLDER", "object": "payment_intent"}).replace("pi_PLACEHOLDER", "pi_" + SURROGATE)
    before = counts(app)
    r = client.post("/webhooks/stripe", data=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "unstorable_value"
    assert counts(app) == before


@pytest.mark.parametrize("field", ["label", "external_id", "queue"])
def test_a_lone_surrogate_in_post_api_jobs_is_a_400(app, client, field: str) -> None:
    body = {"source": "worker", "external_id": "ext-" + uuid.uuid4().hex[:8], field: "x" + SURROGATE}
    text = json.dumps(body).replace("\\\\ud800", SURROGATE)
    before = counts(app)
    r = client.post("/api/jobs", data=text, headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "unstorable_value"
    assert counts(app) == before


# -- b. a cut-off chunked body, a job id with a newline (finding 5) ----------------------------------


def test_b_a_job_id_with_a_trailing_newline_is_refused_at_registration(client) -> None:
    r = client.post("/api/jobs", json={"source": "worker", "external_id": "nl-" + uuid.uuid4().hex[:6], "id": "job_trailing\n"}, headers=KEY)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "invalid_id"
    assert client.get("/api/jobs/job_trailing%0A", headers=KEY).status_code == 404


def _raw(server: Any, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the body ends here, before its last chunk
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("path", ["/webhooks/worker", "/api/jobs"])
def test_b_a_truncated_chunked_body_is_a_400_not_a_500(server, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    answer = _raw(server, head + b"40\r\n{\"external_id\": \"cut")
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:400]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "incomplete_body"


# -- c. unsigned junk does not spend a provider's budget (finding 2) --------------------------------


def test_c_unsigned_posts_do_not_spend_the_per_source_budget(db_url: str, tmp_path) -> None:
    from tests.test_trust_limits import limited_app

    app = limited_app(db_url, tmp_path, rate_limit_webhooks_per_source=2, rate_limit_webhooks_per_address=0)
    app.extensions["gateway"].limits.webhooks_per_source.clock = lambda: 1000.0  # no refill: budget 4 (the burst)
    client = app.test_client()
    junk = [client.post("/webhooks/worker", data=standard_body("junk", "complete"), headers={"webhook-id": f"m{i}"}) for i in range(40)]
    assert {r.status_code for r in junk} == {401}
    signed = []
    for _ in range(6):
        body = standard_body("ext-" + uuid.uuid4().hex[:8], "processing")
        signed.append(client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body)).status_code)
    assert signed == [200] * 4 + [429] * 2  # the whole burst went to the signed deliveries, then the limit holds


# -- d. GitHub's unsigned delivery id (finding 4) ----------------------------------------------------


def test_d_a_github_body_replayed_under_a_new_delivery_id_is_a_duplicate(app, client) -> None:
    """The hot path (PostgreSQL) and the ORM path (SQLite) share the rule: dedup on the body's digest."""
    from tests.adapters import deliveries as d

    run_id = int(uuid.uuid4().int % 10**9)
    register(client, source="github", external_id=str(run_id))
    path, raw, headers = d.github("workflow_run_completed_failure", run_id, delivery=str(uuid.uuid4()))
    assert client.post(path, data=raw, headers=headers).get_json() == {"status": "accepted"}
    before = counts(app)
    replay = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}  # the signature covers only the body
    r = client.post(path, data=raw, headers=replay)
    assert r.status_code == 200 and r.get_json() == {"status": "duplicate"}
    assert counts(app) == before
    # the same body under the same delivery id (GitHub's own redelivery) stays a duplicate
    assert client.post(path, data=raw, headers=headers).get_json() == {"status": "duplicate"}
    # a different signed body is a new event as before
    _, raw2, headers2 = d.github("workflow_run_in_progress", run_id)
    assert client.post(path, data=raw2, headers=headers2).status_code == 200
    assert counts(app)[0] == before[0] + 1


def test_d_only_adapters_with_an_unsigned_event_id_dedup_on_the_digest() -> None:
    from adapters.registry import load_registry

    builtins = ("standard", "stripe", "replicate", "github", "twilio", "mux", "render")
    adapters = load_registry().adapters
    assert {name for name in builtins if not adapters[name].event_id_signed} == {"github"}


# -- e. unsigned requests write (few) rows (finding 6, issue 18) --------------------------------------


def _deliveries(app: Any, **where: Any) -> list[Any]:
    with app.extensions["gateway"].store.reading() as s:
        q = select(Delivery).order_by(Delivery.id)
        for k, v in where.items():
            q = q.where(getattr(Delivery, k) == v)
        return list(s.scalars(q))


def _metric(client: Any, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics", headers=KEY).get_data(as_text=True)):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_e_posts_to_unknown_sources_are_counted_never_stored(app, client) -> None:
    names = [f"attacker-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    before = _metric(client, "gateway_webhooks_total", source="_unknown", outcome="rejected")
    for name in names:
        r = client.post(f"/webhooks/{name}", data=b"{}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "unknown_source"
        assert name not in r.get_data(as_text=True)
    with app.extensions["gateway"].store.reading() as s:
        assert s.scalar(select(func.count()).select_from(Delivery).where(Delivery.source.in_(names))) == 0
    assert _metric(client, "gateway_webhooks_total", source="_unknown", outcome="rejected") == before + 30


def test_e_rejected_deliveries_are_stored_within_a_budget_and_answered_generically(db_url: str, tmp_path) -> None:
    from tests.test_trust_limits import limited_app

    app = limited_app(db_url, tmp_path, rejected_records_per_minute=5)
    app.extensions["gateway"].limits.rejected_records.clock = lambda: 1000.0  # no refill during the test
    client = app.test_client()
    source = "worker"
    before = len(_deliveries(app, source=source, outcome="rejected"))
    answers = [client.post(f"/webhooks/{source}", data=standard_body("x", "complete")) for _ in range(20)]  # no signature headers
    for r in answers:
        assert r.status_code == 401
        assert r.get_json()["error"] == {"code": "invalid_signature", "message": "the delivery could not be verified"}
    stored = _deliveries(app, source=source, outcome="rejected")
    assert len(stored) - before == 5
    assert all("webhook-" in (d.reason or "") for d in stored[before:])  # the record keeps the precise reason
    assert _metric(client, "gateway_rejected_unrecorded_total", source=source) == 15
    assert _metric(client, "gateway_webhooks_total", source=source, outcome="rejected") == 20


def test_e_a_rejected_delivery_shows_what_it_claimed_in_the_trace_and_the_api(app, client) -> None:
    from gateway.trace import render_trace

    reg = register(client)
    job, ext = reg["job"], reg["job"]["external_id"]
    body = standard_body(ext, "complete")
    forged = standard_headers("whsec_" + "QUJD" * 8, body, msg_id="msg_claimed_" + uuid.uuid4().hex[:6])
    assert client.post("/webhooks/worker", data=body, headers=forged).status_code == 401
    assert client.get(f"/api/jobs/{job['id']}", headers=KEY).get_json()["state"] == "queued"  # never applied
    [row] = _deliveries(app, source="worker", job_id=job["id"])
    assert (row.outcome, row.external_id, row.event_id) == ("rejected", ext, forged["webhook-id"])
    trace = client.get(f"/api/jobs/{job['id']}/trace", headers=KEY).get_json()
    [entry] = [e for e in trace["timeline"] if e["what"] == "delivery"]
    assert entry["verified"] is False and entry["signature"] == "invalid"
    assert "rejected, unverified: " in render_trace(trace)
    for name in (job["id"], ext):
        r = client.get("/api/deliveries", query_string={"outcome": "rejected", "job": name}, headers=KEY)
        assert r.status_code == 200, r.get_data(as_text=True)
        [listed] = r.get_json()["deliveries"]
        assert listed["event_id"] == forged["webhook-id"] and listed["verified"] is False and listed["job_id"] == job["id"]
    assert client.get("/api/deliveries", query_string={"outcome": "rejected"}, headers={"Authorization": f"Bearer {reg['token']}"}).status_code == 403
    assert client.get("/api/deliveries", query_string={"outcome": "nope"}, headers=KEY).status_code == 400
