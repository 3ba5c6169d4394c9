"""Issue 13, the findings on serving: security headers, credentials in URLs, /metrics, the demo,
callbacks, logs, gunicorn's own errors, queue membership, limits across workers, private clusters
(f-l of the hardening task; ingest is test_hardening_ingest.py). Each failed on the code before its fix."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest

from tests.conftest import API_KEY, register
from tests.signing import STANDARD_SECRET
from tests.test_hardening_ingest import KEY, _raw, counts

# -- f. security headers (finding 7) ----------------------------------------------------------------


def _assert_security_headers(headers: Any) -> None:
    csp = headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in csp.split(";")) if d}
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]  # no inline script, no eval
    assert directives["default-src"] == ["'self'"] and directives["object-src"] == ["'none'"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_f_security_headers_on_pages_api_static_and_the_fast_poll(server) -> None:
    import requests

    reg = register(server.url)
    job, token = reg["job"]["id"], reg["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    first = requests.get(f"{server.url}/api/jobs/{job}", headers=bearer, timeout=10)
    answers = [
        requests.get(server.url + "/", timeout=10),
        requests.get(server.url + "/static/jobstatus.js", timeout=10),
        requests.get(server.url + "/api/jobs/job_nosuch", headers=KEY, timeout=10),
        requests.post(server.url + "/webhooks/worker", data=b"{}", timeout=10),
        first,
        # answered before Flask (fastpoll.py): a conditional poll of an unchanged job
        requests.get(f"{server.url}/api/jobs/{job}", headers={**bearer, "If-None-Match": first.headers["ETag"]}, timeout=10),
    ]
    assert answers[-1].status_code == 304
    for r in answers:
        _assert_security_headers(r.headers)


# -- g. API keys never travel in a URL (finding 8) -------------------------------------------------


def test_g_an_api_key_as_query_token_is_refused_a_job_token_still_works(client) -> None:
    reg = register(client)
    job, token = reg["job"]["id"], reg["token"]
    for path in (f"/api/jobs/{job}/trace", f"/api/jobs/{job}", f"/api/jobs/{job}/stream", "/api/deliveries"):
        r = client.get(f"{path}?token={API_KEY}")
        assert r.status_code == 401, (path, r.status_code)
        assert r.get_json()["error"]["code"] == "api_key_in_url"
    assert client.get(f"/api/jobs/{job}/trace", headers=KEY).status_code == 200  # in the header, as before
    assert client.get(f"/api/jobs/{job}?token={token}").status_code == 200  # a job token may travel in the URL


# -- h. /metrics: a cached gauge and an optional token (finding 9) ---------------------------------


def test_h_scrapes_share_one_count_of_jobs_by_state(app, client) -> None:
    from sqlalchemy import event

    engine = app.extensions["gateway"].store.engine
    grouped: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "GROUP BY" in statement.upper():
            grouped.append(statement)

    register(client)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(20):
            assert client.get("/metrics").status_code == 200
        assert len(grouped) == 1  # one count for 20 scrapes within metrics_cache_seconds
        app.extensions["gateway"].metrics.jobs_sampled_at -= 3600  # as if the cache had aged
        text = client.get("/metrics").get_data(as_text=True)
        assert len(grouped) == 2
        assert 'gateway_jobs{state="queued"}' in text
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_h_metrics_can_require_a_bearer_token(db_url: str, tmp_path) -> None:
    from tests.gwapp import make_app

    app = make_app(db_url, tmp_path, GATEWAY_METRICS_TOKEN="scrape-token-0123456789")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers=KEY).status_code == 401  # an API key is not the metrics token
    r = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})
    assert r.status_code == 200 and 'gateway_jobs{state="queued"}' in r.get_data(as_text=True)


# -- i. the smaller findings (10, all but the WebSocket one) ---------------------------------------


def test_i_the_demo_never_posts_to_the_requests_host(db_url: str, tmp_path) -> None:
    import dataclasses

    from gateway.app import create_app
    from gateway.config import SourceConfig
    from tests.conftest import make_config

    config = make_config(db_url, tmp_path)
    demo = SourceConfig(name="demo", adapter="standard", secrets_env="DEMO_SECRETS", secrets=(STANDARD_SECRET,))
    app = create_app(dataclasses.replace(config, demo=True, sources={**config.sources, "demo": demo}), background=False)
    client = app.test_client()
    assert app.extensions["gateway"].simulator.base_url is None
    before = counts(app)
    r = client.post("/demo/jobs", json={"count": 1}, headers={"Host": "attacker.example"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "demo_url_missing"
    assert counts(app) == before  # nothing registered, nothing sent anywhere
    # the demo source's public URL, when configured, is where it posts
    public = dataclasses.replace(demo, public_url="https://gw.example.test/webhooks/demo")
    app2 = create_app(dataclasses.replace(config, demo=True, sources={**config.sources, "demo": public}), background=False)
    assert app2.extensions["gateway"].simulator.base_url == "https://gw.example.test"


def test_i_a_callback_secret_equal_to_a_webhook_secret_is_refused(db_url: str, tmp_path) -> None:
    from gateway.errors import ConfigError
    from tests.gwapp import make_app

    extra = '[sources.cb]\nadapter = "standard"\nsecrets_env = "WORKER_SECRETS"\ncallback_url = "http://127.0.0.1:9/cb"\ncallback_secret_env = "CB_SECRET"\n'
    with pytest.raises(ConfigError, match="differ from the source's webhook secrets"):
        make_app(db_url, tmp_path, extra, CB_SECRET=STANDARD_SECRET)


def test_i_short_configured_secrets_are_redacted_by_value(db_url: str, tmp_path, caplog) -> None:
    """A short secret has no secret's shape; sent as a source name (the path) and as X-Request-ID it
    is still masked in every formatted line, JSON and text."""
    import logging

    from gateway.logs import JsonFormatter, TextFormatter
    from tests.gwapp import make_app

    short = "hunter2x"
    extra = '[sources.plain]\nadapter = "standard"\nsecrets_env = "PLAIN_SECRETS"\n'
    api = make_app(db_url, tmp_path, extra, PLAIN_SECRETS=f"whsec_{'QUJD' * 8},{short}").test_client()
    caplog.set_level(logging.INFO)
    api.post(f"/webhooks/{short}", data=b"{}", headers={"X-Request-ID": short})  # an unknown source named like the secret
    api.post("/webhooks/plain", data=b"{}", headers={"X-Request-ID": short})
    lines = [f.format(r) for r in caplog.records for f in (JsonFormatter(), TextFormatter())]
    assert any("[redacted]" in line for line in lines)
    assert not [line for line in lines if short in line]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),  # not a request line
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: <script>\r\n\r\n", 400),  # a header name with a space
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # over limit_request_line
])
def test_i_gunicorns_own_errors_are_the_json_error_shape(server, request_bytes: bytes, status: int) -> None:
    answer = _raw(server, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), answer[:300]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and "<" not in error["message"]


# -- j. queue membership (CONTRACT §1) ---------------------------------------------------------------


def test_j_a_job_reported_queued_in_another_queue_counts_there_only(app, client) -> None:
    from tests.gwapp import post_standard

    tag = uuid.uuid4().hex[:6]
    imports = f"imports-{tag}"
    default = f"default-{tag}"  # the test's own "registered without a name" queue, as default would be
    moving = register(client, queue=default)["job"]
    behind = [register(client, queue=default)["job"] for _ in range(3)]
    ahead = [register(client, queue=imports)["job"] for _ in range(2)]
    assert [client.get(f"/api/jobs/{j['id']}", headers=KEY).get_json()["queue"]["position"] for j in [moving, *behind]] == [1, 2, 3, 4]
    r = post_standard(client, "worker", STANDARD_SECRET, moving["external_id"], "queued", queue={"name": imports})
    assert r.status_code == 200, r.get_data(as_text=True)

    def queue_of(job: dict[str, Any]) -> dict[str, Any]:
        return client.get(f"/api/jobs/{job['id']}", headers=KEY).get_json()["queue"]

    assert queue_of(moving) == {"name": imports, "position": 3, "total": 3}  # among the queued jobs of imports only
    assert [queue_of(j)["position"] for j in ahead] == [1, 2]
    assert [(queue_of(j)["position"], queue_of(j)["total"]) for j in behind] == [(1, 3), (2, 3), (3, 3)]  # the queue it left moved up


def test_j_a_job_registered_without_a_queue_moves_from_default(app, client) -> None:
    from tests.gwapp import post_standard

    imports = f"imports-{uuid.uuid4().hex[:6]}"
    others = [register(client)["job"] for _ in range(2)]
    job = register(client)["job"]
    assert job["queue"]["name"] == "default" and job["queue"]["position"] >= 3
    post_standard(client, "worker", STANDARD_SECRET, job["external_id"], "queued", queue={"name": imports})
    assert client.get(f"/api/jobs/{job['id']}", headers=KEY).get_json()["queue"] == {"name": imports, "position": 1, "total": 1}
    assert all(client.get(f"/api/jobs/{o['id']}", headers=KEY).get_json()["queue"]["name"] == "default" for o in others)


# -- k. limits across workers --------------------------------------------------------------------------


def _limited(db_url: str, tmp_path, env: dict[str, str] | None = None, **settings_: Any) -> Any:
    from gateway.app import create_app
    from gateway.config import load_config
    from tests.conftest import TEST_ENV, write_config

    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings_.items())
    cfg = write_config(tmp_path / f"limits-{uuid.uuid4().hex[:6]}.toml", extra_gateway=extra)
    return create_app(load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url, **(env or {})}), background=False)


def test_k_with_redis_two_workers_share_one_bucket(db_url: str, tmp_path, redis_url: str) -> None:
    import time

    workers = [_limited(db_url, tmp_path, redis_url=redis_url, rate_limit_webhooks_per_address=1).test_client() for _ in range(2)]
    assert all(c.application.extensions["gateway"].limits.shared for c in workers)
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    started = time.monotonic()
    answers = [workers[i % 2].post("/webhooks/worker", data=b"{}", environ_base={"REMOTE_ADDR": address}).status_code for i in range(20)]
    elapsed = time.monotonic() - started
    allowed = sum(1 for s in answers if s != 429)
    # one bucket (burst 2, 1/s) for both; two per-worker buckets would have allowed 4 and more
    assert 2 <= allowed <= 2 + math.ceil(elapsed * 1), (allowed, elapsed, answers)
    assert set(answers) <= {401, 429}


def test_k_without_redis_each_worker_takes_its_share(db_url: str, tmp_path) -> None:
    app = _limited(db_url, tmp_path, {"GATEWAY_WORKERS": "4"}, rate_limit_store="local", rate_limit_webhooks_per_address=8)
    limits = app.extensions["gateway"].limits
    assert (limits.shared, limits.workers) == (False, 4)
    assert (limits.webhooks_per_address.rate, limits.webhooks_per_address.burst) == (2.0, 4.0)
    limits.webhooks_per_address.clock = lambda: 1000.0
    client = app.test_client()
    answers = [client.post("/webhooks/worker", data=b"{}", environ_base={"REMOTE_ADDR": "10.4.4.4"}).status_code for _ in range(10)]
    assert answers == [401] * 4 + [429] * 6


def test_k_an_unreachable_redis_does_not_stop_webhooks(db_url: str, tmp_path) -> None:
    from tests.servers import free_port

    client = _limited(db_url, tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_webhooks_per_address=1).test_client()
    assert [client.post("/webhooks/worker", data=b"{}").status_code for _ in range(5)] == [401] * 5


# -- l. a private PostgreSQL cluster: skip outside CI, fail in CI ----------------------------------------


@pytest.mark.parametrize("required, outcome", [("", "skipped"), ("1", "failed")])
def test_l_a_missing_private_cluster_skips_outside_ci_and_fails_in_it(monkeypatch, tmp_path, required: str, outcome: str) -> None:
    from _pytest.outcomes import Failed, Skipped

    from tests import pgcluster

    monkeypatch.setattr(pgcluster, "PG_BIN", tmp_path / "no-postgres-here")  # as on a machine without the binaries
    monkeypatch.setenv("GATEWAY_REQUIRE_POSTGRES", required)
    with pytest.raises(Skipped if outcome == "skipped" else Failed):
        pgcluster.require()
