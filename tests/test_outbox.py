"""The outbox: signed callbacks and details fetches, retried with backoff, claimed once, traced."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest, json_body, utc_from_iso
from adapters.standard import verify_standard
from gateway.errors import PayloadError
from gateway.models import OutboxItem
from gateway.outbox import backoff, redact_url
from gateway.states import State
from tests.conftest import API_KEY, register
from tests.gwapp import gw_of, make_app, post_standard
from tests.receiver import Receiver
from tests.signing import STANDARD_SECRET, iso_now

CALLBACK_SECRET = "whsec_" + "Y2FsbGJhY2stc2VjcmV0LWZvci10aGUtdGVzdHMtMDE="  # base64 of 32 bytes


def _settle_pending(url: str) -> None:
    from sqlalchemy import update

    from gateway.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(update(OutboxItem).where(OutboxItem.status == "pending").values(status="dead", last_error="test isolation"))
    engine.dispose()


@pytest.fixture(autouse=True)
def only_this_tests_rows(request):
    """Tests share a database per session: give up whatever other tests left pending (a thin
    Render webhook's fetch of api.render.com, say), before and after, so each test's dispatcher
    finds only its own rows."""
    url = request.getfixturevalue("db_url") if "db_url" in request.fixturenames else None
    if url:
        _settle_pending(url)
    yield
    if url:
        _settle_pending(url)


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def callback_app(db_url, tmp_path, url, *, max_attempts=15, secret_env=True):
    extra = f"""
[sources.cb]
adapter = "standard"
secrets_env = "WORKER_SECRETS"
callback_url = "{url}/hooks/gateway?token=do-not-log"
{'callback_secret_env = "CB_SECRET"' if secret_env else ''}
"""
    return make_app(db_url, tmp_path, extra, f"outbox_backoff = 0\noutbox_max_attempts = {max_attempts}\noutbox_timeout = 2", CB_SECRET=CALLBACK_SECRET)


def failed_job(client) -> dict[str, Any]:
    reg = register(client, "cb")
    r = post_standard(client, "cb", STANDARD_SECRET, reg["job"]["external_id"], "failed", error={"code": "boom", "message": "it broke"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return reg


def retry(client, job_id) -> Any:
    return client.post(f"/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {API_KEY}"})


def trace(client, job_id, what) -> list[dict[str, Any]]:
    r = client.get(f"/api/jobs/{job_id}/trace", headers={"Authorization": f"Bearer {API_KEY}"})
    return [e for e in r.get_json()["timeline"] if e["what"] == what]


def get_job(client, job_id) -> dict[str, Any]:
    return client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()


def rows(app, *job_ids: str) -> list[OutboxItem]:
    """The outbox rows of these jobs (the database is shared by the session's tests)."""
    with gw_of(app).store.reading() as s:
        return list(s.scalars(select(OutboxItem).where(OutboxItem.job_id.in_(job_ids)).order_by(OutboxItem.id)))


def test_retry_callback_is_signed_retried_until_2xx_and_traced(db_url, tmp_path, receiver):
    receiver.respond = lambda n, req: (500, "not yet") if n <= 2 else (200, "ok")
    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    outbox = gw_of(app).outbox
    assert retry(client, job_id).status_code == 202
    assert outbox.wake.is_set()  # the commit woke this process's dispatcher
    for _ in range(3):
        assert outbox.run_once() == 1
    assert outbox.run_once() == 0  # delivered: nothing left to send
    got = receiver.wait_for(3)
    assert [r.status for r in got] == [500, 500, 200]
    for req in got:
        payload = Webhook(CALLBACK_SECRET).verify(req.body, req.headers)
        assert payload["type"] == "job.retry_requested"
        assert payload["data"]["id"] == job_id and payload["data"]["attempt"] == 2 and payload["data"]["state"] == "queued"
        assert req.path == "/hooks/gateway?token=do-not-log"
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one message, however many tries
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts, row.delivered_at is not None) == ("delivered", 3, True)
    tries = trace(client, job_id, "callback")
    assert [(t["try"], t["status"], t["outcome"]) for t in tries] == [(1, 500, "retry"), (2, 500, "retry"), (3, 200, "delivered")]
    assert all("do-not-log" not in json.dumps(t) for t in tries)  # no query string (tokens) in the trace
    assert trace(client, job_id, "callback_queued")[0]["webhook_id"] == got[0].headers["webhook-id"]
    sample = gw_of(app).metrics.registry.get_sample_value
    assert sample("gateway_outbox_tries_total", {"kind": "callback", "outcome": "retry"}) == 2
    assert sample("gateway_outbox_tries_total", {"kind": "callback", "outcome": "delivered"}) == 1


def test_callback_signed_with_a_secret_derived_from_the_source_secret_when_no_callback_secret(db_url, tmp_path, receiver):
    """Derived (HMAC of the webhook secret and a fixed label), never the webhook secret itself:
    the callback replayed to the gateway's own inbound endpoint does not verify (issue 13)."""
    import base64
    import hashlib
    import hmac

    app = callback_app(db_url, tmp_path, receiver.url, secret_env=False)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    gw_of(app).outbox.run_once()
    (req,) = receiver.wait_for(1)
    derived = "whsec_" + base64.b64encode(hmac.new(STANDARD_SECRET.encode(), b"gateway callback secret v1", hashlib.sha256).digest()).decode()
    assert Webhook(derived).verify(req.body, req.headers)["data"]["id"] == job_id
    with pytest.raises(Exception):
        Webhook(STANDARD_SECRET).verify(req.body, req.headers)
    replayed = client.post("/webhooks/cb", data=req.body, headers={k: v for k, v in req.headers.items() if k.lower().startswith("webhook-")})
    assert replayed.status_code == 401


def test_gives_up_after_the_limit_and_says_so(db_url, tmp_path, receiver):
    receiver.respond = lambda n, req: (503, "down")
    app = callback_app(db_url, tmp_path, receiver.url, max_attempts=3)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    outbox = gw_of(app).outbox
    while outbox.run_once():
        pass
    assert len(receiver.wait_for(3)) == 3  # recorded once answered; no more come: the outbox gave up
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts, row.last_error) == ("dead", 3, "HTTP 503")
    assert [t["outcome"] for t in trace(client, job_id, "callback")] == ["retry", "retry", "gave_up"]


def test_410_gives_up_at_once_and_unreachable_receiver_is_retried(db_url, tmp_path, receiver):
    receiver.respond = lambda n, req: (410, "gone")
    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    outbox = gw_of(app).outbox
    outbox.run_once()
    assert outbox.run_once() == 0
    assert rows(app, job_id)[0].status == "dead"

    receiver.stop()  # nothing listens on that port any more
    job2 = failed_job(client)["job"]["id"]
    retry(client, job2)
    outbox.run_once()
    (row,) = rows(app, job2)
    assert row.status == "pending" and row.attempts == 1 and row.last_error == "ConnectionError"
    assert trace(client, job2, "callback")[0]["outcome"] == "retry"


def test_retry_after_is_honoured(db_url, tmp_path, receiver):
    receiver.respond = lambda n, req: (429, "slow down", {"Retry-After": "120"})
    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    outbox = gw_of(app).outbox
    outbox.run_once()
    assert outbox.run_once() == 0  # not due for two minutes, although the backoff base is 0
    (row,) = rows(app, job_id)
    assert (row.next_attempt_at - row.created_at).total_seconds() >= 119


def test_concurrent_dispatchers_send_each_row_once(db_url, tmp_path, receiver):
    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    jobs = [failed_job(client)["job"]["id"] for _ in range(8)]
    for job_id in jobs:
        assert retry(client, job_id).status_code == 202
    outbox = gw_of(app).outbox
    outbox.batch = 3
    barrier = threading.Barrier(4)

    def sweep() -> None:
        barrier.wait()
        outbox.drain()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outbox.drain()
    got = receiver.wait_for(8)
    ids = [r.headers["webhook-id"] for r in got]
    assert sorted(ids) == sorted(f"msg_retry_{j}_2" for j in jobs)  # each once, none twice
    assert {r.status for r in rows(app, *jobs)} == {"delivered"}


def test_no_callback_without_callback_url(db_url, tmp_path):
    app = make_app(db_url, tmp_path)
    client = app.test_client()
    reg = register(client, "worker")
    post_standard(client, "worker", STANDARD_SECRET, reg["job"]["external_id"], "failed")
    assert retry(client, reg["job"]["id"]).status_code == 202
    assert rows(app, reg["job"]["id"]) == []


def test_a_bad_callback_secret_stops_start_up(db_url, tmp_path):
    from gateway.errors import ConfigError

    extra = '[sources.cb]\nadapter = "standard"\nsecrets_env = "WORKER_SECRETS"\ncallback_url = "http://127.0.0.1:9/x"\ncallback_secret_env = "CB_SECRET"\n'
    with pytest.raises(ConfigError, match="sources.cb.callback_secret_env"):
        make_app(db_url, tmp_path, extra)  # CB_SECRET unset


@given(st.integers(1, 60), st.integers(0, 100), st.integers(0, 10_000), st.floats(0, 1))
def test_backoff_grows_is_capped_and_keeps_half(attempts, base, cap, r):
    delay = backoff(attempts, base, cap, rnd=lambda: r)
    ceiling = min(cap, base * 2 ** (attempts - 1))
    assert ceiling / 2 <= delay <= ceiling
    assert backoff(attempts + 1, base, cap, rnd=lambda: r) >= delay


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://user:pw@app.example.com:8443/hooks?token=x#f") == "https://app.example.com:8443/hooks"


# -- details: thin webhooks, the adapter says what to fetch ------------------------------------------


class ThinAdapter(Adapter):
    """A provider that only says "something happened to X": the state is behind its API."""

    name = "thin"

    def verify(self, request: WebhookRequest, secrets) -> None:
        verify_standard(request, secrets, self)

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        body = json_body(request)
        return [ProviderEvent(event_id=request.header("webhook-id"), external_id=body["external_id"], occurred_at=utc_from_iso(body["occurred_at"]),
                              state=None, type="thing.updated", needs_details=True)]

    def details_request(self, event: ProviderEvent, api_key):
        return DetailsRequest(url=f"{self.options['api_base']}/things/{event.external_id}", headers={"Authorization": f"Bearer {api_key}"})

    def parse_details(self, event: ProviderEvent, status: int, body: bytes) -> list[ProviderEvent]:
        if status != 200:
            raise PayloadError(f"details answered {status}")
        data = json.loads(body)
        state = {"running": State.PROCESSING, "done": State.COMPLETE}.get(data.get("status"))
        if state is None:
            raise PayloadError("unknown status")
        return [ProviderEvent(event_id=f"{event.event_id}:details", external_id=event.external_id, occurred_at=event.occurred_at,
                              state=state, type=f"thing.{data['status']}", result=data.get("result"))]


@pytest.fixture
def thin_app(db_url, tmp_path, receiver, monkeypatch):
    import gateway.app
    from adapters.registry import load_registry

    def registry_with_thin():
        reg = load_registry()
        reg.adapters["thin"] = ThinAdapter
        return reg

    monkeypatch.setattr(gateway.app, "load_registry", registry_with_thin)
    extra = f'[sources.thin]\nadapter = "thin"\nsecrets_env = "WORKER_SECRETS"\napi_base = "{receiver.url}/v1"\napi_key_env = "THIN_API_KEY"\n'
    return make_app(db_url, tmp_path, extra, "outbox_backoff = 0", THIN_API_KEY="thin-api-key-123")


def test_thin_webhook_is_acknowledged_then_details_fetched_and_applied(thin_app, receiver):
    receiver.respond = lambda n, req: (503, "busy") if n == 1 else (200, json.dumps({"status": "done", "result": {"url": "https://x/1"}}))
    client = thin_app.test_client()
    reg = register(client, "thin")
    job_id, ext = reg["job"]["id"], reg["job"]["external_id"]
    r = post_standard(client, "thin", STANDARD_SECRET, ext, "queued")
    assert r.get_json() == {"status": "accepted"}
    assert client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["state"] == "queued"
    outbox = gw_of(thin_app).outbox
    outbox.run_once()  # 503: retried
    outbox.run_once()
    got = receiver.wait_for(2)
    assert [(g.method, g.path, g.headers["authorization"]) for g in got] == [("GET", f"/v1/things/{ext}", "Bearer thin-api-key-123")] * 2
    job = client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    assert (job["state"], job["result"]) == ("complete", {"url": "https://x/1"})
    details = trace(client, job_id, "details")
    assert [d["outcome"] for d in details] == ["retry", "delivered"]
    assert details[1]["events"][0]["decision"] == "applied"
    # a second delivery of the same thin webhook is a duplicate and owes nothing more
    assert outbox.run_once() == 0


def test_details_answer_the_adapter_cannot_read_gives_up(thin_app, receiver):
    receiver.respond = lambda n, req: (404, "no such thing")
    client = thin_app.test_client()
    reg = register(client, "thin")
    post_standard(client, "thin", STANDARD_SECRET, reg["job"]["external_id"], "queued", occurred_at=iso_now())
    gw_of(thin_app).outbox.run_once()
    (row,) = rows(thin_app, reg["job"]["id"])
    assert (row.status, row.last_error) == ("dead", "details answered 404")
    assert trace(client, reg["job"]["id"], "details")[0]["outcome"] == "gave_up"


def test_a_gateway_that_does_not_know_the_source_leaves_its_rows_alone(db_url, tmp_path, receiver):
    app = callback_app(db_url, tmp_path, receiver.url)
    other = make_app(db_url, tmp_path)  # same database, a configuration without the "cb" source
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    gw_of(other).outbox.run_once()
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts) == ("pending", 0)
    gw_of(app).outbox.run_once()
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts, len(receiver.wait_for(1))) == ("delivered", 1, 1)


def test_operator_lists_a_dead_row_and_requeues_it(db_url, tmp_path, receiver, monkeypatch):
    from click.testing import CliRunner

    from gateway.cli import main
    from tests.conftest import TEST_ENV

    receiver.respond = lambda n, req: (500, "broken") if n == 1 else (200, "fixed")
    app = callback_app(db_url, tmp_path, receiver.url, max_attempts=1)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    outbox = gw_of(app).outbox
    outbox.run_once()
    (row,) = rows(app, job_id)
    assert row.status == "dead"
    for key, value in {**TEST_ENV, "DATABASE_URL": db_url}.items():
        monkeypatch.setenv(key, value)
    listed = CliRunner().invoke(main, ["outbox"])
    assert listed.exit_code == 0 and f"{row.id}" in listed.output and job_id in listed.output and "HTTP 500" in listed.output
    done = CliRunner().invoke(main, ["outbox", "--requeue", str(row.id)])
    assert done.exit_code == 0, done.output
    again = CliRunner().invoke(main, ["outbox", "--requeue", str(row.id)])
    assert again.exit_code != 0 and "only a dead row" in again.output
    outbox.run_once()
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts) == ("delivered", 1)
    whats = [e["what"] for e in client.get(f"/api/jobs/{job_id}/trace", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["timeline"]]
    assert whats.count("callback") == 2 and "callback_requeued" in whats


def test_settled_rows_are_purged_after_retention_pending_ones_never(db_url, tmp_path, receiver):
    from datetime import timedelta

    from gateway.ids import utcnow
    from gateway.outbox import purge

    receiver.respond = lambda n, req: (200, "ok") if n == 1 else (500, "no")
    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    delivered, pending = failed_job(client)["job"]["id"], failed_job(client)["job"]["id"]
    retry(client, delivered)
    gw_of(app).outbox.run_once()
    retry(client, pending)
    gw_of(app).outbox.run_once()
    assert [r.status for r in rows(app, delivered, pending)] == ["delivered", "pending"]
    store = gw_of(app).store
    purge(store, utcnow() - timedelta(days=1))
    assert len(rows(app, delivered, pending)) == 2  # younger than the cut-off
    purge(store, utcnow() + timedelta(seconds=1))
    assert [r.job_id for r in rows(app, delivered, pending)] == [pending]


def test_callback_secret_must_be_a_standard_webhooks_secret(db_url, tmp_path):
    from gateway.errors import ConfigError

    extra = '[sources.cb]\nadapter = "stripe"\nsecrets_env = "STRIPE_SECRETS"\ncallback_url = "http://127.0.0.1:9/x"\ncallback_secret_env = "CB_BAD"\n'
    with pytest.raises(ConfigError, match="sources.cb.callback_secret_env: the callback secret must be a Standard Webhooks secret"):
        make_app(db_url, tmp_path, extra, CB_BAD="not-a-standard-secret")
    # without callback_secret_env the secret is derived from the Stripe secret: always a whsec_ one
    make_app(db_url, tmp_path, extra.replace('callback_secret_env = "CB_BAD"\n', ""))


def test_a_try_whose_lease_ran_out_does_not_overwrite_the_next_claim(db_url, tmp_path, receiver):
    from sqlalchemy import update

    from gateway.ids import utcnow
    from gateway.outbox import Result

    app = callback_app(db_url, tmp_path, receiver.url)
    client = app.test_client()
    job_id = failed_job(client)["job"]["id"]
    retry(client, job_id)
    outbox = gw_of(app).outbox
    (slow,) = [r for r in outbox._claim() if r.job_id == job_id]  # a process claims it, then hangs
    with gw_of(app).store.transaction() as w:  # ...past its lease
        w.session.execute(update(OutboxItem).where(OutboxItem.id == slow.id).values(next_attempt_at=utcnow()))
    outbox.run_once()  # another claim delivers it
    outbox._record(slow, Result(error="ReadTimeout"))  # the hung try finally reports
    (row,) = rows(app, job_id)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)
    assert [t["outcome"] for t in trace(client, job_id, "callback")] == ["delivered"]


def test_render_thin_deploy_webhook_is_completed_through_the_events_api(db_url, tmp_path, receiver):
    """The real Render adapter: a thin ``deploy_ended`` is acknowledged, then the outbox asks
    Render's Events API (here a loopback stand-in) and the deploy's job completes."""
    from adapters import fixtures
    from tests.signing import RENDER_SECRET, standard_headers

    suffix = uuid.uuid4().hex[:8]
    thin = fixtures.load("render")["deploy_ended_thin"]["body"]
    answer = fixtures.load("render")["api_event_deploy_ended"]["body"]
    event_id, deploy_id = f"{thin['data']['id']}{suffix}", f"{answer['details']['deployId']}{suffix}"
    thin = {**thin, "data": {**thin["data"], "id": event_id}}
    answer = {**answer, "id": event_id, "details": {**answer["details"], "deployId": deploy_id}}
    receiver.respond = lambda n, req: (200, json.dumps(answer), {"Content-Type": "application/json"})
    extra = f'[sources.render-local]\nadapter = "render"\nsecrets_env = "RENDER_SECRETS"\napi_base = "{receiver.url}/v1"\napi_key_env = "RENDER_API_KEY"\n'
    app = make_app(db_url, tmp_path, extra)
    client = app.test_client()
    reg = register(client, "render-local", external_id=deploy_id, label="Deploy api-service")
    body = json.dumps(thin)
    r = client.post("/webhooks/render-local", data=body, headers=standard_headers(RENDER_SECRET, body, msg_id=event_id))
    assert r.get_json() == {"status": "accepted"}
    assert get_job(client, reg["job"]["id"])["state"] == "queued"
    gw_of(app).outbox.run_once()
    (req,) = receiver.wait_for(1)
    assert (req.method, req.path, req.headers["authorization"]) == ("GET", f"/v1/events/{event_id}", "Bearer rnd_test_api_key_0123456789")
    job = get_job(client, reg["job"]["id"])
    assert (job["state"], job["result"]["id"]) == ("complete", deploy_id)
    (details,) = trace(client, reg["job"]["id"], "details")
    assert details["outcome"] == "delivered" and details["events"] == [{"event_id": f"{event_id}:details", "state": "complete", "decision": "applied"}]
