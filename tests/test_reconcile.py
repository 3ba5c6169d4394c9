"""Reconciliation (issue 21): a job whose completing webhook never comes is read from its
provider's API — a real HTTP fake on loopback answering with the documented shapes — and ends
where the provider says, never stalled; a misbehaving API causes no storm, blocks no ingest,
and the job is stalled only after stall_after."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from adapters.fixtures import load_api
from gateway.ids import utcnow
from gateway.models import OutboxItem
from tests.conftest import API_KEY, TEST_ENV, register
from tests.fake_provider import FakeProviderAPI
from tests.gwapp import config_file, gw_of, make_app
from tests.signing import REPLICATE_SECRET, standard_headers

AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEY_ENV = "PROVIDER_API_KEY"
#: provider -> (secrets env, path of its default API base, source options, API key)
PROVIDERS: dict[str, tuple[str, str, str, str]] = {
    "stripe": ("STRIPE_SECRETS", "/v1", "", "sk_test_reconcile_0123456789"),
    "replicate": ("REPLICATE_SECRETS", "/v1", "", "r8_reconcile_0123456789"),
    "github": ("GITHUB_SECRETS", "", 'repository = "octo-org/octo-repo"\n', "github_pat_reconcile_0123456789"),
    "render": ("RENDER_SECRETS", "/v1", 'service_id = "srv-d1l6h5ngi27c73b2p1q0"\n', "rnd_reconcile_0123456789"),
    "mux": ("MUX_SECRETS", "", "", "mux-token-id:mux-token-secret-0123456789"),
    "twilio": ("TWILIO_TOKENS", "", 'public_url = "https://gw.example.com/webhooks/twilio"\n',
               "AC3c4a1b0e7f2d5c6b9a8e1f0d3c2b4a5e:auth-token-0123456789"),
}
TERMINAL = [(p, name) for p in sorted(PROVIDERS) for name, fx in load_api(p).items() if fx["expect"]["state"] in ("complete", "failed")]
LIVE = [(p, name) for p in sorted(PROVIDERS) for name, fx in load_api(p).items() if fx["expect"]["state"] in ("queued", "processing")]


@pytest.fixture
def fake():
    with FakeProviderAPI() as api:
        yield api


def source_toml(fake: FakeProviderAPI, provider: str, name: str = "", stall_after: int = 60) -> str:
    secrets_env, base_path, options, _ = PROVIDERS[provider]
    return (f'[sources.{name or "rc-" + provider}]\nadapter = "{provider}"\nsecrets_env = "{secrets_env}"\napi_base = "{fake.base}{base_path}"\n'
            f'api_key_env = "{KEY_ENV}"\nstall_after = {stall_after}\n{options}')


def provider_app(db_url, tmp_path, fake: FakeProviderAPI, provider: str, *, name: str = "", extra_gateway: str = "", **env: str) -> tuple[Any, str]:
    """An app with one source of ``provider`` reading from ``fake``, and the source's name
    (its own per test: the PostgreSQL database is shared, and the watchdog looks at a whole source)."""
    name = name or f"rc-{provider}-{uuid.uuid4().hex[:8]}"
    app = make_app(db_url, tmp_path, source_toml(fake, provider, name), extra_gateway, **{KEY_ENV: PROVIDERS[provider][3], **env})
    return app, name


def job_of(client, job_id: str) -> dict[str, Any]:
    return client.get(f"/api/jobs/{job_id}", headers=AUTH).get_json()


def timeline(client, job_id: str, what: str) -> list[dict[str, Any]]:
    return [e for e in client.get(f"/api/jobs/{job_id}/trace", headers=AUTH).get_json()["timeline"] if e["what"] == what]


def fresh_id(provider: str, old: str) -> str:
    """A new id shaped like ``old`` (the test database is shared: each test has its own job)."""
    hexa = uuid.uuid4().hex
    if provider == "github":
        return str(10**9 + int(hexa[:7], 16))
    if provider == "twilio":
        return old[:2] + hexa
    head = old[:old.index("_", 3) + 1] if old.startswith("cs_test_") else old[:3] if old[2:3] in ("_", "-") or old.startswith("dep-") else ""
    return (old[:4] if old.startswith("dep-") else head) + hexa[:24]


def serve(fake: FakeProviderAPI, provider: str, name: str) -> dict[str, Any]:
    """Answer the fixture's status read, for a fresh external id; the fixture with that id."""
    fx = load_api(provider)[name]
    new = fresh_id(provider, fx["external_id"])
    fx = json.loads(json.dumps(fx).replace(fx["external_id"], new))
    fake.answers[fx["path"]] = (fx["status"], fx["body"])
    return fx


@pytest.mark.parametrize("provider, name", TERMINAL)
def test_a_job_whose_last_webhook_never_comes_ends_where_the_provider_says(db_url, tmp_path, fake, provider, name):
    fx = serve(fake, provider, name)
    app, src = provider_app(db_url, tmp_path, fake, provider)
    gw, client = gw_of(app), app.test_client()
    job = register(client, src, fx["external_id"])["job"]
    # quiet past reconcile_after (half of stall_after by default): the watchdog owes a read, the outbox makes it
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31)) == []
    gw.outbox.run_once()
    (path, auth) = fake.requests[-1]
    assert path == fx["path"] and auth and auth.split()[0] in ("Bearer", "Basic")
    after = job_of(client, job["id"])
    assert after["state"] == fx["expect"]["state"]
    if fx["expect"]["state"] == "failed":
        assert after["error"]["code"] == fx["expect"]["error_code"]
    # never stalled: past stall_after the job is finished
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=120)) == []
    assert job_of(client, job["id"])["state"] == fx["expect"]["state"]
    # the trace says where the truth came from
    (read,) = timeline(client, job["id"], "reconcile")
    assert read["read_from"] == "the provider's API" and read["outcome"] == "delivered"
    assert read["events"][0]["decision"] == "applied" and read["events"][0]["event_id"].startswith("read:")
    trace = client.get(f"/api/jobs/{job['id']}/trace", headers=AUTH).get_json()
    assert [e["kind"] for e in trace["events"]] == ["reconcile"]
    assert not timeline(client, job["id"], "stalled")
    assert PROVIDERS[provider][3] not in json.dumps(trace)  # the key is never traced


@pytest.mark.parametrize("provider, name", LIVE)
def test_still_running_at_the_provider_is_stalled_at_stall_after_and_says_it_asked(db_url, tmp_path, fake, provider, name):
    fx = serve(fake, provider, name)
    app, src = provider_app(db_url, tmp_path, fake, provider)
    gw, client = gw_of(app), app.test_client()
    job = register(client, src, fx["external_id"])["job"]
    gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31))
    gw.outbox.run_once()
    read = job_of(client, job["id"])
    assert read["state"] == fx["expect"]["state"]
    if provider == "replicate":  # progress from the prediction's logs, as its webhooks give it
        assert read["progress"] == {"current": 45, "total": 100, "step": "Sampling"}
    # a "still running" answer is dated by the provider, not the read: it is not fresh news
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=45)) == []
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=61)) == [job["id"]]
    (stall,) = timeline(client, job["id"], "stalled")
    assert stall["provider"] == "asked: still running"
    assert fake.count() == 1  # one read per quiet period


def test_a_job_reaching_stall_after_unasked_is_asked_first(db_url, tmp_path, fake):
    fx = serve(fake, "replicate", "prediction_succeeded")
    app, src = provider_app(db_url, tmp_path, fake, "replicate")
    gw, client = gw_of(app), app.test_client()
    job = register(client, src, fx["external_id"])["job"]
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=300)) == []  # owes the read instead of stalling
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=300)) == []  # owed, not tried yet: still waits
    gw.outbox.run_once()
    assert job_of(client, job["id"])["state"] == "complete"


@pytest.mark.parametrize("mode", ["429", "500"])
def test_an_api_answering_429_or_500_sees_no_storm_and_jobs_stall_after_stall_after(db_url, tmp_path, fake, mode):
    fake.mode = mode
    app, src = provider_app(db_url, tmp_path, fake, "replicate", extra_gateway="outbox_backoff = 1")
    gw, client = gw_of(app), app.test_client()
    jobs = [register(client, src, uuid.uuid4().hex)["job"] for _ in range(6)]
    gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31))
    for _ in range(5):
        gw.outbox.run_once()
    # the first failure holds back every other read of the source (Retry-After 30 s): one request
    assert fake.count() == 1
    with gw.store.reading() as s:
        items = list(s.scalars(select(OutboxItem).where(OutboxItem.job_id.in_([j["id"] for j in jobs]))))
    assert len(items) == 6 and all(i.status == "pending" for i in items)
    assert min(i.next_attempt_at for i in items) >= utcnow() + timedelta(seconds=20)
    # nothing stalls before stall_after; all of them at it, saying the provider could not be asked
    assert gw.watchdog.run_once(now=utcnow() + timedelta(seconds=45)) == []
    stalled = gw.watchdog.run_once(now=utcnow() + timedelta(seconds=61))
    assert sorted(stalled) == sorted(j["id"] for j in jobs)
    for j in jobs:
        (stall,) = timeline(client, j["id"], "stalled")
        assert stall["provider"].startswith("could not be asked")


def test_reads_are_budgeted_per_source_per_minute(db_url, tmp_path, fake):
    ids = [uuid.uuid4().hex for _ in range(5)]
    for pred in ids:
        fake.answers[f"/v1/predictions/{pred}"] = (200, {"id": pred, "status": "processing",
                                                         "created_at": "2026-11-28T12:00:00Z", "started_at": "2026-11-28T12:00:01Z"})
    app, src = provider_app(db_url, tmp_path, fake, "replicate", extra_gateway="reconcile_per_minute = 2")
    gw, client = gw_of(app), app.test_client()
    jobs = [register(client, src, pred)["job"] for pred in ids]
    gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31))
    for _ in range(4):
        gw.outbox.run_once()
    assert fake.count() == 2  # two a minute; the rest wait their turn, untried
    with gw.store.reading() as s:
        waiting = [i for i in s.scalars(select(OutboxItem).where(OutboxItem.job_id.in_([j["id"] for j in jobs]))) if i.status == "pending"]
    assert len(waiting) == 3 and all(i.attempts == 0 and i.last_error is None for i in waiting)


def test_a_hanging_api_blocks_no_ingest(db_url, tmp_path, fake):
    fake.mode = "hang"
    app, src = provider_app(db_url, tmp_path, fake, "replicate", extra_gateway="outbox_timeout = 2")
    gw, client = gw_of(app), app.test_client()
    slow = register(client, src, uuid.uuid4().hex)["job"]
    other = register(client, src, uuid.uuid4().hex)["job"]
    gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31))
    sweep = threading.Thread(target=gw.outbox.run_once)
    sweep.start()
    try:
        assert fake.arrived.wait(10)  # the read is in flight, hanging
        body = json.dumps({"id": other["external_id"], "status": "processing", "created_at": "2026-11-28T12:00:00Z",
                           "started_at": "2026-11-28T12:00:01Z", "logs": ""})
        r = client.post(f"/webhooks/{src}", data=body, headers=standard_headers(REPLICATE_SECRET, body))
        assert r.status_code == 200 and r.get_json()["status"] == "accepted"
        assert job_of(client, other["id"])["state"] == "processing"
    finally:
        fake.release()
        sweep.join(30)
    assert not sweep.is_alive()
    assert job_of(client, slow["id"])["state"] == "queued"  # no answer: nothing learned, stall later


def test_on_demand_by_api_and_cli_and_a_source_without_key(db_url, tmp_path, fake):
    fx = serve(fake, "stripe", "payment_intent_succeeded")
    app, src = provider_app(db_url, tmp_path, fake, "stripe")
    gw, client = gw_of(app), app.test_client()
    job = register(client, src, fx["external_id"])["job"]
    assert client.post(f"/api/jobs/{job['id']}/reconcile").status_code == 401
    r = client.post(f"/api/jobs/{job['id']}/reconcile", headers=AUTH)
    assert r.status_code == 202 and r.get_json()["reconcile"]["external_id"] == fx["external_id"]
    gw.outbox.run_once()
    assert job_of(client, job["id"])["state"] == "complete"
    r = client.post(f"/api/jobs/{job['id']}/reconcile", headers=AUTH)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "job_finished"
    assert client.post("/api/jobs/job_nope/reconcile", headers=AUTH).status_code == 404
    plain = register(client, "worker")["job"]  # the Standard Webhooks adapter has no API to ask
    r = client.post(f"/api/jobs/{plain['id']}/reconcile", headers=AUTH)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_reconciled"


def test_cli_reconcile_and_sources(db_url, tmp_path, fake):
    from gateway.cli import main

    name = f"rc-cli-{uuid.uuid4().hex[:8]}"  # its own source: the database is shared with other tests' jobs
    app, _ = provider_app(db_url, tmp_path, fake, "replicate", name=name)
    gw, client = gw_of(app), app.test_client()
    ids = [register(client, name, serve(fake, "replicate", "prediction_succeeded")["external_id"])["job"]["id"] for _ in range(3)]
    key = PROVIDERS["replicate"][3]
    cfg = config_file(tmp_path, source_toml(fake, "replicate", name), "reconcile_per_minute = 60")
    env = {**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url, KEY_ENV: key}
    runner = CliRunner()
    out = runner.invoke(main, ["sources", "--json"], env=env)
    assert out.exit_code == 0, out.output
    by_name = {row["name"]: row["reconcile"] for row in json.loads(out.output)}
    assert by_name[name] == "after 30 s quiet" and by_name["worker"].startswith("no:") and by_name["stripe"].startswith("no:")
    assert key not in out.output
    out = runner.invoke(main, ["sources"], env=env)
    assert out.exit_code == 0 and "RECONCILE" in out.output and "after 30 s quiet" in out.output and key not in out.output
    out = runner.invoke(main, ["reconcile", ids[0]], env=env)
    assert out.exit_code == 0 and "queued" in out.output, out.output
    out = runner.invoke(main, ["reconcile", "--source", name, "--since", "1h", "--json"], env=env)
    assert out.exit_code == 0, out.output
    bulk = json.loads(out.output)
    assert sorted(bulk["jobs"]) == sorted(ids)
    with gw.store.reading() as s:
        due = sorted(i.next_attempt_at for i in s.scalars(select(OutboxItem).where(OutboxItem.job_id.in_(ids), OutboxItem.key.like("%:by:%"))
                                                                   ) if i.payload.get("by") == "cli")
    assert len(due) == 4 and due[-1] - due[-3] >= timedelta(seconds=1.9)  # spread out: 60 a minute
    out = runner.invoke(main, ["reconcile", "--source", "worker", "--since", "1h"], env=env)
    assert out.exit_code != 0 and "not reconciled" in out.output
    gw.outbox.run_once()
    assert job_of(client, ids[0])["state"] == "complete"


def test_reconcile_after_must_be_positive(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError

    path = config_file(tmp_path, '[sources.x]\nadapter = "replicate"\nsecrets_env = "REPLICATE_SECRETS"\nreconcile_after = 0\n')
    with pytest.raises(ConfigError, match="sources.x.reconcile_after"):
        load_config({**TEST_ENV, "GATEWAY_CONFIG": str(path)})


def test_late_webhook_after_a_read_folds_to_the_same_job(db_url, tmp_path, fake):
    """The read said complete; the provider's own completing webhook then arrives late: a duplicate in all but id, stale."""
    fx = serve(fake, "replicate", "prediction_succeeded")
    app, src = provider_app(db_url, tmp_path, fake, "replicate")
    gw, client = gw_of(app), app.test_client()
    job = register(client, src, fx["external_id"])["job"]
    gw.watchdog.run_once(now=utcnow() + timedelta(seconds=31))
    gw.outbox.run_once()
    before = job_of(client, job["id"])
    body = json.dumps(fx["body"])
    r = client.post(f"/webhooks/{src}", data=body, headers=standard_headers(REPLICATE_SECRET, body))
    assert r.status_code == 200
    after = job_of(client, job["id"])
    assert (after["state"], after["result"], after["version"]) == (before["state"], before["result"], before["version"])


def test_live_server_completes_a_job_from_the_api_and_never_stalls_it(db_url, tmp_path, fake):
    """gunicorn's own watchdog and outbox: the completing webhook never comes, the job completes
    from the provider's API after reconcile_after; the log never holds the API key."""
    import requests

    from tests.conftest import ARTIFACTS, server_env
    from tests.servers import Server

    fx = serve(fake, "replicate", "prediction_succeeded")
    name = f"rc-live-{uuid.uuid4().hex[:8]}"
    source = source_toml(fake, "replicate", name, stall_after=30) + "reconcile_after = 1\n"
    cfg = config_file(tmp_path, source, "watchdog_interval = 1\noutbox_interval = 1")
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "gunicorn-reconcile.log"
    key = PROVIDERS["replicate"][3]
    srv = Server(server_env(db_url, cfg, **{KEY_ENV: key}), log_path=log_path).start()
    try:
        reg = register(srv.url, name, fx["external_id"])
        url, auth = f"{srv.url}/api/jobs/{reg['job']['id']}", {"Authorization": f"Bearer {reg['token']}"}
        seen = requests.get(url, headers=auth, timeout=10)
        for _ in range(10):  # long-polls: each returns as soon as the job changes (or after 10 s)
            if seen.json()["state"] != "queued":
                break
            seen = requests.get(url, params={"wait": 10}, headers={**auth, "If-None-Match": seen.headers["ETag"]}, timeout=20)
            if seen.status_code == 304:
                seen = requests.get(url, headers=auth, timeout=10)
        job = seen.json()
        assert job["state"] == "complete" and job["result"]["url"].startswith("https://replicate.delivery/"), job
        trace = requests.get(f"{url}/trace", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
        assert [e["kind"] for e in trace["events"]] == ["reconcile"]
        assert any(e["what"] == "reconcile" and e["read_from"] == "the provider's API" for e in trace["timeline"])
        assert fake.requests and fake.requests[0][1] == f"Bearer {key}"
    finally:
        srv.stop()
    assert key not in log_path.read_text()
