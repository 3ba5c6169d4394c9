"""Polls answered before Flask (gateway/fastpoll.py): the same 304 and 200 the Flask path gives,
from memory, and nothing else — every other poll goes on to Flask."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from gateway.polls import ASKED_MEMORY
from tests.conftest import API_KEY, TEST_ENV, register, write_config
from tests.signing import STANDARD_SECRET, standard_body, standard_headers


def live_app(pg_url: str, tmp_path: Path, extra_gateway: str = "") -> Any:
    """An app on PostgreSQL whose bus listener is connected, so versions are known in memory."""
    from gateway.app import create_app
    from gateway.config import load_config

    cfg = write_config(tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.toml", extra_gateway)
    app = create_app(load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": pg_url}))
    relay = app.extensions["gateway"].relay
    relay.start()
    assert relay.bus.connected.wait(10)
    return app


@pytest.fixture
def app(pg_url: str, tmp_path: Path) -> Iterator[Any]:
    app = live_app(pg_url, tmp_path)
    yield app
    app.extensions["gateway"].background.stop()


def known_job(app: Any) -> tuple[str, str, str]:
    """A registered job, read once (so this process knows its version): id, token, ETag."""
    reg = register(app.test_client())
    job_id, token = reg["job"]["id"], reg["token"]
    r = app.test_client().get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    return job_id, token, r.headers["ETag"]


def from_memory(app: Any) -> float:
    return app.extensions["gateway"].metrics.registry.get_sample_value("gateway_relay_polls_from_memory_total") or 0.0


def fast_and_flask(app: Any) -> tuple[Client, Client]:
    """Clients of the whole app (fast path first) and of the Flask app behind it."""
    return Client(app.wsgi_app), Client(app.wsgi_app.inner)


@pytest.mark.parametrize("how", ["bearer", "query token", "api key", "allowed origin", "foreign origin", "weak tag in a list"])
def test_the_fast_304_is_the_flask_304(app: Any, how: str) -> None:
    job_id, token, etag = known_job(app)
    path, headers = f"/api/jobs/{job_id}", {"Authorization": f"Bearer {token}", "If-None-Match": etag, "X-Request-ID": "rid-fast-1"}
    if how == "query token":
        path, headers = f"{path}?token={token}", {k: v for k, v in headers.items() if k != "Authorization"}
    elif how == "api key":
        headers["Authorization"] = f"Bearer {API_KEY}"
    elif how == "allowed origin":
        headers["Origin"] = "http://localhost"
    elif how == "foreign origin":
        headers["Origin"] = "https://evil.example"
    elif how == "weak tag in a list":
        headers["If-None-Match"] = f'"job_other.1", W/{etag}'
    fast, flask = fast_and_flask(app)
    before = from_memory(app)
    answered = app.wsgi_app.answer(_request(path, headers), job_id)
    assert answered is not None  # the fast path answers this one itself
    r_fast, r_flask = fast.get(path, headers=headers), flask.get(path, headers=headers)
    assert r_fast.status == r_flask.status == "304 NOT MODIFIED"
    assert sorted(r_fast.headers.items()) == sorted(r_flask.headers.items())
    assert r_fast.get_data() == r_flask.get_data() == b""
    assert r_fast.headers["ETag"] == etag and r_fast.headers["X-Request-ID"] == "rid-fast-1"
    assert ("Access-Control-Allow-Origin" in r_fast.headers) is (how == "allowed origin")
    assert from_memory(app) == before + 3  # fast twice, Flask's own from-memory path once


@pytest.mark.parametrize("how", ["no tag", "stale tag", "allowed origin"])
def test_the_fast_200_is_the_flask_200(app: Any, how: str) -> None:
    """A poll that cannot be a 304 is answered from the JSON held in memory, byte for byte the
    answer a database read gives (Flask's, with the memory turned off for it)."""
    job_id, token, etag = known_job(app)
    path, headers = f"/api/jobs/{job_id}", {"Authorization": f"Bearer {token}", "X-Request-ID": "rid-fast-2"}
    if how == "stale tag":
        headers["If-None-Match"] = f'"{job_id}.0"'
    elif how == "allowed origin":
        headers["Origin"] = "http://localhost"
    fast, flask = fast_and_flask(app)
    answered = app.wsgi_app.answer(_request(path, headers), job_id)
    assert answered is not None and answered[0].status == 200
    r_fast = fast.get(path, headers=headers)
    r_db = flask.get(path, headers=headers, environ_base={ASKED_MEMORY: True})  # the view reads the database
    assert r_fast.status == r_db.status == "200 OK"
    assert sorted(r_fast.headers.items()) == sorted(r_db.headers.items())
    assert r_fast.get_data() == r_db.get_data()
    assert r_fast.get_json()["id"] == job_id and r_fast.headers["ETag"] == etag


def _request(path: str, headers: dict[str, str]) -> Any:
    from werkzeug.test import EnvironBuilder

    return EnvironBuilder(path=path, headers=headers).get_request()


def test_every_other_poll_goes_on_to_flask(app: Any) -> None:
    job_id, token, etag = known_job(app)
    other_id, other_token, _ = known_job(app)
    fast = app.wsgi_app
    ok = {"Authorization": f"Bearer {token}", "If-None-Match": etag}
    path = f"/api/jobs/{job_id}"
    assert fast.answer(_request(path, ok), job_id) is not None
    # a stale or no tag: the JSON this process holds for the job's current version, a 200
    for tag in (f'"{job_id}.0"', None):
        h = {**ok, "If-None-Match": tag} if tag else {"Authorization": ok["Authorization"]}
        answered = fast.answer(_request(path, h), job_id)
        assert answered is not None and answered[0].status == 200
    refused = {
        "long-poll": (path + "?wait=1", ok),
        "another job's token": (path, {**ok, "Authorization": f"Bearer {other_token}"}),
        "tampered token": (path, {**ok, "Authorization": f"Bearer {token[:-2]}xx"}),
        "no credentials": (path, {"If-None-Match": etag}),
    }
    for why, (p, h) in refused.items():
        assert fast.answer(_request(p, h), job_id) is None, why
    client = Client(fast)
    assert client.get(path + "?wait=0", headers=ok).status_code == 304  # Flask's long-poll, timed out
    assert client.get(path, headers={**ok, "If-None-Match": f'"{job_id}.0"'}).status_code == 200
    assert client.get(path, headers={**ok, "Authorization": f"Bearer {other_token}"}).status_code == 403
    assert client.get(path, headers={**ok, "Authorization": "Bearer nonsense"}).status_code == 401
    assert client.head(path, headers=ok).status_code == 304  # HEAD is Flask's
    assert client.get(f"/api/jobs/{other_id}/", headers=ok).status_code in (308, 404)  # not the route: Flask's
    # a change acknowledged here is never hidden
    reg_ext = app.test_client().get(path, headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["external_id"]
    body = standard_body(reg_ext, "processing")
    assert app.test_client().post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body)).status_code == 200
    r = client.get(path, headers=ok)
    assert r.status_code == 200 and r.headers["ETag"] != etag


def test_the_browser_rate_limit_still_holds(pg_url: str, tmp_path: Path) -> None:
    """Polls answered before Flask spend the address's tokens; past the rate, Flask answers 429."""
    app = live_app(pg_url, tmp_path, "rate_limit_public_per_address = 2")
    try:
        job_id, token, etag = known_job(app)
        client = Client(app.wsgi_app)
        statuses = [client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}", "If-None-Match": etag}).status_code
                    for _ in range(12)]
        assert 304 in statuses and statuses[-1] == 429 and statuses.count(304) <= 6
        r = client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}", "If-None-Match": etag})
        assert r.status_code == 429 and r.headers["Retry-After"] and r.get_json()["error"]["code"] == "rate_limited"
        # an integrator's key is not a browser: never limited
        key = {"Authorization": f"Bearer {API_KEY}", "If-None-Match": etag}
        assert all(client.get(f"/api/jobs/{job_id}", headers=key).status_code == 304 for _ in range(8))
    finally:
        app.extensions["gateway"].background.stop()
