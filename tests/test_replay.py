"""Replay (CONTRACT §10): a stored delivery run through its source's adapter as configured now —
parsed again, not verified again; new events recorded and folded, old ones duplicates; 404 for
unknown, rejected and pruned deliveries; bodies pruned after ``delivery_retention_days``
(SQLite and PostgreSQL through db_url)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters.base import Adapter, ProviderEvent, WebhookRequest, check_header_token, json_body, utc_from_iso
from adapters.standard import verify_standard
from gateway.auth import fingerprint
from gateway.errors import PayloadError
from gateway.ids import utcnow
from gateway.models import Delivery, OutboxItem
from gateway.states import State
from gateway.support import prune
from tests.conftest import API_KEY, register
from tests.gwapp import api, gw_of, make_app
from tests.signing import STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, iso_now, standard_headers, stripe_event, stripe_headers
from tests.test_cli import cli
from tests.test_forward_delivery import ENDPOINT_SECRET

PROVIDER_TOKEN = "provider-fixed-token-0123456789abcdef"


class BatchAdapter(Adapter):
    """A provider that sends several events per body; which types it knows is configuration
    (``states``), and an unknown type makes the body unreadable — until the configuration learns it."""

    name = "batch"
    options_schema = {"states": dict}

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        verify_standard(request, secrets, self)

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        body = json_body(request)
        known = self.options.get("states", {})
        events = []
        for e in body["events"]:
            if e["type"] not in known:
                raise PayloadError(f"unknown event type {e['type']}")
            events.append(ProviderEvent(event_id=e["id"], external_id=body["external_id"], occurred_at=utc_from_iso(e["at"]),
                                        state=State(known[e["type"]]), type=e["type"]))
        return events


class TokenAdapter(BatchAdapter):
    """The same bodies, authenticated by a fixed token in a header instead of a signature."""

    name = "tokenbatch"
    signs_body = False

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        check_header_token(request, secrets, "X-Provider-Token")


@pytest.fixture
def batch_app(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``batch_app(states)``: an app on the same database whose batch source knows these types."""
    import gateway.app
    from adapters.registry import load_registry

    def registry_with_batch() -> Any:
        reg = load_registry()
        reg.adapters["batch"] = BatchAdapter
        reg.adapters["tokenbatch"] = TokenAdapter
        return reg

    monkeypatch.setattr(gateway.app, "load_registry", registry_with_batch)

    def build(states: dict[str, str]) -> Any:
        table = ", ".join(f'"{t}" = "{s}"' for t, s in states.items())
        extra = f"""
[sources.batch]
adapter = "batch"
secrets_env = "WORKER_SECRETS"
states = {{ {table} }}

[sources.tokenbatch]
adapter = "tokenbatch"
secrets_env = "PROVIDER_TOKENS"
states = {{ {table} }}

[endpoints.backend]
url = "http://127.0.0.1:9/hooks"
secret_env = "BACKEND_SECRET"
events = ["job.*", "delivery.batch"]
"""
        return make_app(db_url, tmp_path, extra, BACKEND_SECRET=ENDPOINT_SECRET, PROVIDER_TOKENS=PROVIDER_TOKEN)

    return build


def post_batch(client: Any, ext: str, events: list[dict[str, str]], secret: str = STANDARD_SECRET) -> tuple[Any, dict[str, str]]:
    body = json.dumps({"external_id": ext, "events": events})
    headers = standard_headers(secret, body)
    return client.post("/webhooks/batch", data=body, headers=headers), headers


def deliveries(client: Any, **params: str) -> list[dict[str, Any]]:
    r = client.get("/api/deliveries", query_string={"limit": "500", **params}, headers=api())
    assert r.status_code == 200
    rows: list[dict[str, Any]] = r.get_json()["deliveries"]
    return rows


def test_replay_after_a_configuration_change_records_the_new_events(batch_app: Any) -> None:
    old = batch_app({"thing.started": "processing"})
    client = old.test_client()
    ext = "batch-" + uuid.uuid4().hex[:10]
    job = register(client, "batch", ext)["job"]
    started = {"id": "evt_s_" + uuid.uuid4().hex[:8], "type": "thing.started", "at": iso_now(1)}
    finished = {"id": "evt_f_" + uuid.uuid4().hex[:8], "type": "thing.finished", "at": iso_now(2)}
    r, _ = post_batch(client, ext, [started])
    assert r.get_json() == {"status": "accepted"}
    r, sent = post_batch(client, ext, [started, finished])  # the adapter does not know thing.finished yet
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "unparseable_body"
    (invalid,) = [d for d in deliveries(client, source="batch", outcome="invalid") if d["event_id"] == sent["webhook-id"]]
    # as configured then, the body still cannot be read: the house error, nothing recorded
    r = client.post(f"/api/deliveries/{invalid['id']}/replay", headers=api())
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "unparseable_body"

    new = batch_app({"thing.started": "processing", "thing.finished": "complete"})
    client = new.test_client()
    r = client.post(f"/api/deliveries/{invalid['id']}/replay", headers=api())
    by = "key:" + fingerprint(API_KEY)
    assert r.status_code == 200
    assert r.get_json() == {"status": "accepted", "by": by,
                            "events": [{"event_id": started["id"], "decision": "duplicate"}, {"event_id": finished["id"], "decision": "applied"}]}
    polled = client.get(f"/api/jobs/{job['id']}", headers=api()).get_json()
    assert polled["state"] == "complete"

    trace = client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_json()
    (line,) = [e for e in trace["timeline"] if e["what"] == "replay"]
    assert (line["delivery_id"], line["outcome"], line["by"]) == (invalid["id"], "accepted", by)
    assert line["events"] == r.get_json()["events"]

    with gw_of(new).store.reading() as session:
        rows = session.scalars(select(OutboxItem).where(OutboxItem.job_id == job["id"], OutboxItem.kind == "forward")).all()
    types = [row.payload["type"] for row in rows]
    assert types[-1] == "job.complete" and rows[-1].payload["data"] == polled  # the new version is forwarded…
    assert types.count("delivery.batch") == 1  # …the replayed delivery is not (nor was it when unreadable)

    # again: everything is a duplicate now, by either spelling of the id
    r = client.post(f"/api/deliveries/dlv_{invalid['id']}/replay", headers=api())
    assert r.get_json() == {"status": "duplicate", "by": by,
                            "events": [{"event_id": started["id"], "decision": "duplicate"}, {"event_id": finished["id"], "decision": "duplicate"}]}
    assert client.get(f"/api/jobs/{job['id']}", headers=api()).get_json()["version"] == polled["version"]


def test_unknown_rejected_and_pruned_deliveries_answer_404_and_nothing_leaks(batch_app: Any) -> None:
    app = batch_app({"thing.started": "processing"})
    client = app.test_client()
    ext = "batch-" + uuid.uuid4().hex[:10]
    job = register(client, "batch", ext)["job"]
    started = {"id": "evt_s_" + uuid.uuid4().hex[:8], "type": "thing.started", "at": iso_now(1)}
    r, sent = post_batch(client, ext, [started])
    assert r.status_code == 200
    (good,) = [d for d in deliveries(client, source="batch", job=job["id"]) if d["event_id"] == started["id"]]
    forged, _ = post_batch(client, ext, [{**started, "id": "evt_forged"}], secret="whsec_" + "Zm9yZ2VkLXNlY3JldC1mb3ItdGhlLXRlc3QtMDAwMQ==")
    assert forged.status_code == 401
    (rejected,) = [d for d in deliveries(client, source="batch", outcome="rejected") if d["event_id"] == "evt_forged"]
    with gw_of(app).store.reading() as session:
        row = session.get(Delivery, rejected["id"])
        assert row is not None and row.body is None and row.headers is None  # a rejected delivery never keeps a body

    answers = []
    for delivery_id in (rejected["id"], 999_999_999, "dlv_x", "12345678901234567890"):
        r = client.post(f"/api/deliveries/{delivery_id}/replay", headers=api())
        assert r.status_code == 404, delivery_id
        assert r.get_json()["error"]["code"] == "delivery_not_found" and set(r.get_json()["error"]) == {"code", "message"}
        answers.append(r.get_data(as_text=True))
    assert client.post(f"/api/deliveries/{good['id']}/replay").status_code == 401
    token = client.post("/api/tokens", json={"job": job["id"], "scopes": ["read", "retry"]}, headers=api()).get_json()["token"]
    assert client.post(f"/api/deliveries/{good['id']}/replay", headers={"Authorization": f"Bearer {token}"}).status_code == 403

    r = client.post(f"/api/deliveries/{good['id']}/replay", headers=api())
    assert r.get_json()["status"] == "duplicate"
    answers += [r.get_data(as_text=True), json.dumps(deliveries(client)),
                client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_data(as_text=True)]

    # past delivery_retention_days the body is gone: the delivery stays listed, replay is 404
    store = gw_of(app).store
    later = utcnow() + timedelta(days=8)
    assert prune(store, 30, body_days=7, now=later, dry_run=True).bodies >= 1
    assert client.post(f"/api/deliveries/{good['id']}/replay", headers=api()).status_code == 200  # a dry run clears nothing
    assert prune(store, 30, body_days=7, now=later).bodies >= 1
    with store.reading() as session:
        row = session.get(Delivery, good["id"])
        assert row is not None and row.body is None and row.headers is None
    r = client.post(f"/api/deliveries/{good['id']}/replay", headers=api())
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "delivery_not_found"
    assert any(d["id"] == good["id"] for d in deliveries(client, source="batch"))

    for text in answers:
        for secret in (STANDARD_SECRET, STANDARD_SECRET_2, ENDPOINT_SECRET, API_KEY, sent["webhook-signature"].split(",", 1)[1]):
            assert secret not in text


def test_gateway_replay_on_the_command_line(client: Any, db_url: str, tmp_path: Path) -> None:
    pi = "pi_" + uuid.uuid4().hex[:20]
    job = register(client, "stripe", pi)["job"]
    body = stripe_event("payment_intent.processing", {"id": pi, "object": "payment_intent", "status": "processing"})
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(STRIPE_SECRET, body)).get_json() == {"status": "accepted"}
    (row,) = [d for d in deliveries(client, job=job["id"])]
    with gw_of(client.application).store.reading() as session:  # on PostgreSQL, bound by the fast path's script
        stored = session.get(Delivery, row["id"])
        assert stored is not None and stored.body == body.encode() and stored.headers["Stripe-Signature"]
    out = cli(db_url, tmp_path, "replay", "--json", f"dlv_{row['id']}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "duplicate", "events": [{"event_id": json.loads(body)["id"], "decision": "duplicate"}], "by": "cli"}
    trace = client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_json()
    assert [e["by"] for e in trace["timeline"] if e["what"] == "replay"] == ["cli"]
    text = cli(db_url, tmp_path, "trace", job["id"]).stdout
    assert f"delivery dlv_{row['id']}" in text and "by cli:" in text and "duplicate" in text
    out = cli(db_url, tmp_path, "replay", "999999999")
    assert out.returncode == 1 and "no stored delivery 999999999" in out.stderr
    assert "ID" in cli(db_url, tmp_path, "deliveries", "--job", job["id"]).stdout.splitlines()[0]
    dry = json.loads(cli(db_url, tmp_path, "prune", "--json", "--dry-run", "--body-days", "1").stdout)
    assert dry["bodies"] == 0 and dry["bodies_cutoff"]  # nothing is a day old yet
    assert "--body-days" in cli(db_url, tmp_path, "prune", "--help").stdout


def test_a_providers_fixed_token_is_neither_stored_nor_forwarded_and_replay_needs_none(batch_app: Any) -> None:
    app = batch_app({"thing.started": "processing"})
    client = app.test_client()
    ext = "tok-" + uuid.uuid4().hex[:10]
    job = register(client, "tokenbatch", ext)["job"]
    body = json.dumps({"external_id": ext, "events": [{"id": "evt_t_" + uuid.uuid4().hex[:8], "type": "thing.started", "at": iso_now()}]})
    r = client.post("/webhooks/tokenbatch", data=body, headers={"X-Provider-Token": PROVIDER_TOKEN, "Content-Type": "application/json"})
    assert r.get_json() == {"status": "accepted"}
    (row,) = deliveries(client, job=job["id"])
    with gw_of(app).store.reading() as session:
        stored = session.get(Delivery, row["id"])
        assert stored is not None and stored.body == body.encode()
        assert PROVIDER_TOKEN not in json.dumps(stored.headers) and stored.headers["Content-Type"] == "application/json"
    r = client.post(f"/api/deliveries/{row['id']}/replay", headers=api())  # parsed again, never verified again
    assert r.status_code == 200 and r.get_json()["status"] == "duplicate"
