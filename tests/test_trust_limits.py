"""Abuse limits: body size (413), rates per source and per client address (429 + Retry-After),
connection caps, and slow clients that cannot hold the server (real gunicorn)."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.config import load_config
from gateway.limits import BUDGET, CONNECTION, PUBLIC, SOCKET, STREAM, WEBHOOK, ConnectionCounter, RateLimiter
from tests.conftest import API_KEY, ARTIFACTS, TEST_ENV, register, server_env, write_config
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_body, standard_headers

KEY = {"Authorization": f"Bearer {API_KEY}"}


def limited_app(db_url: str, tmp_path: Path, **settings_: Any) -> Any:
    extra = "\n".join(f"{k} = {v}" for k, v in settings_.items())
    cfg = write_config(tmp_path / f"limits-{uuid.uuid4().hex[:6]}.toml", extra_gateway=extra)
    return create_app(load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url}), background=False)


def signed(ext: str = "", state: str = "processing") -> tuple[str, dict[str, str]]:
    body = standard_body(ext or "ext-" + uuid.uuid4().hex[:8], state)
    return body, standard_headers(STANDARD_SECRET, body)


def assert_error_shape(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    err = r.get_json()["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str)
    if code:
        assert err["code"] == code
    return err


# -- the buckets themselves ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 50), gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=300))
def test_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(rate: int, gaps: list[float]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock)
    allowed, start = 0, clock.now
    for gap in gaps:
        clock.now += gap
        wait = limiter.take("k")
        if wait == 0:
            allowed += 1
        else:
            assert 0 < wait <= 1 / rate + 1e-9  # Retry-After is honest: one token is that far away
    assert allowed <= limiter.burst + rate * (clock.now - start) + 1e-6


def test_bucket_refills_and_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, burst=2, clock=clock)
    assert [limiter.take("a") for _ in range(3)][:2] == [0, 0]
    assert limiter.take("a") > 0 and limiter.take("b") == 0
    clock.now += 0.5
    assert limiter.take("a") == 0


def test_connection_counter_caps_and_releases() -> None:
    counter = ConnectionCounter(2)
    assert counter.acquire("1.2.3.4") and counter.acquire("1.2.3.4")
    assert not counter.acquire("1.2.3.4") and counter.acquire("5.6.7.8")
    counter.release("1.2.3.4")
    assert counter.acquire("1.2.3.4")
    from gateway.errors import RateLimited

    with pytest.raises(RateLimited), counter.hold("1.2.3.4"):
        pass
    assert counter.count("1.2.3.4") == 2


# -- through the app ------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_everywhere(db_url: str, tmp_path: Path) -> None:
    app = limited_app(db_url, tmp_path, max_body_bytes=70000)
    client = app.test_client()
    big = b"x" * 80000
    assert_error_shape(client.post("/webhooks/worker", data=big), 413, "payload_too_large")
    assert_error_shape(client.post("/api/jobs", data=big, headers={**KEY, "Content-Type": "application/json"}), 413)


def test_webhook_rate_per_source(db_url: str, tmp_path: Path) -> None:
    app = limited_app(db_url, tmp_path, rate_limit_webhooks_per_source=3, rate_limit_webhooks_per_address=0)
    client = app.test_client()
    answers = []
    for i in range(12):
        body, headers = signed()
        answers.append(client.post("/webhooks/worker", data=body, headers=headers, environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}))
    limited = [r for r in answers if r.status_code == 429]
    assert limited and all(r.status_code in (200, 429) for r in answers)
    for r in limited:
        assert_error_shape(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
    # another source is not held back by this one's flood
    body, headers = signed()
    assert client.post("/webhooks/auto", data=body, headers=headers).status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'gateway_webhooks_total{outcome="rate_limited",source="worker"}' in metrics


def test_webhook_rate_per_address(db_url: str, tmp_path: Path) -> None:
    app = limited_app(db_url, tmp_path, rate_limit_webhooks_per_source=0, rate_limit_webhooks_per_address=3)
    client = app.test_client()
    flood = [client.post("/webhooks/worker", data=signed()[0], environ_base={"REMOTE_ADDR": "10.9.9.9"}) for _ in range(10)]
    assert any(r.status_code == 429 for r in flood)
    body, headers = signed()
    assert client.post("/webhooks/worker", data=body, headers=headers, environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 200


def test_public_endpoints_rate_per_address_but_not_for_api_keys(db_url: str, tmp_path: Path) -> None:
    app = limited_app(db_url, tmp_path, rate_limit_public_per_address=2)
    client = app.test_client()
    reg = register(client)
    job, token = reg["job"]["id"], reg["token"]
    browser = {"Authorization": f"Bearer {token}"}
    answers = [client.get(f"/api/jobs/{job}", headers=browser, environ_base={"REMOTE_ADDR": "10.2.2.2"}) for _ in range(10)]
    assert answers[0].status_code == 200
    assert any(r.status_code == 429 for r in answers)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers if r.status_code == 429)
    # the same flood with the query-string token and a different address starts fresh
    assert client.get(f"/api/jobs/{job}?token={token}", environ_base={"REMOTE_ADDR": "10.3.3.3"}).status_code == 200
    # an integrator's backend (API key) is not a browser: not counted
    assert all(client.get(f"/api/jobs/{job}", headers=KEY, environ_base={"REMOTE_ADDR": "10.2.2.2"}).status_code == 200 for _ in range(10))


def test_each_route_says_which_limits_it_takes(sqlite_url: str, tmp_path: Path) -> None:
    """The routes marked @public, @webhook and @long_lived are exactly the browser endpoints, the
    webhook endpoint and the long-lived connections (a new route takes no budget by accident)."""
    app = limited_app(sqlite_url, tmp_path)
    marks = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        budget, connection = getattr(view, BUDGET, None), getattr(view, CONNECTION, None)
        if budget or connection:
            marks[rule.rule] = (budget, connection)
    assert marks == {
        "/api/jobs/<job_id>": (PUBLIC, None),
        "/api/jobs/<job_id>/retry": (PUBLIC, None),
        "/api/jobs/<job_id>/stream": (PUBLIC, STREAM),
        "/ws": (PUBLIC, SOCKET),
        "/static/<path:filename>": (PUBLIC, None),
        "/": (PUBLIC, None),
        "/demo/jobs": (PUBLIC, None),
        "/demo/results/<job_id>": (PUBLIC, None),
        "/webhooks/<source_name>": (WEBHOOK, None),
    }


# -- slow clients, on a real gunicorn gevent server ---------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory, sqlite_url: str) -> Any:
    d = tmp_path_factory.mktemp("slow")
    cfg = write_config(d / "gateway.toml", extra_gateway="body_timeout = 2")
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(sqlite_url, cfg), workers=1, log_path=ARTIFACTS / "slow-clients.log").start()
    yield srv
    srv.stop()


def closed_by_server(sock: socket.socket, deadline: float) -> bytes | None:
    """Read until the server closes the connection; what it sent, or None if still open at the deadline."""
    got = b""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def test_slowloris_headers_do_not_block_and_are_cut(slow_server: Server) -> None:
    """Headers sent a byte at a time: one worker keeps serving others, and the server hangs up."""
    slow = socket.create_connection(("127.0.0.1", slow_server.port))
    request = b"POST /webhooks/worker HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    closed = False
    try:
        for i, byte in enumerate(request):
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if i % 5 == 0:  # meanwhile, the same single worker answers everyone else
                assert requests.get(slow_server.url + "/healthz", timeout=5).status_code == 200
            time.sleep(0.1)
        if not closed:
            closed = closed_by_server(slow, time.monotonic() + 15) is not None
    finally:
        slow.close()
    assert closed, "a client trickling its headers must be disconnected (gunicorn --keep-alive covers the header read)"


def test_slow_body_gets_408_and_the_connection_closes(slow_server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", slow_server.port))
    try:
        sock.sendall(b"POST /webhooks/worker HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":")
        assert requests.get(slow_server.url + "/healthz", timeout=5).status_code == 200
        answer = closed_by_server(sock, time.monotonic() + 20)
    finally:
        sock.close()
    assert answer is not None, "the server must hang up on a body that never arrives"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in body
