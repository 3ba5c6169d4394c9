"""Tokens that really expire (issue 13): a WebSocket subscription or SSE stream opened with a
job token ends when the token expires — a ``token_expired`` error frame (the socket closes when
nothing else is subscribed on it), a ``token_expired`` event that ends the stream — and a
subscription renewed with a later token before then carries on. Real gunicorn, real clients."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, ARTIFACTS, register, server_env, write_config
from tests.relay_helpers import SSEReader, Watcher, job_frame, post_webhook
from tests.servers import Server

TTL = 3  # seconds: the server's token_ttl, so every token the tests get expires during the test


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory, sqlite_url: str) -> Iterator[Server]:
    cfg = write_config(tmp_path_factory.mktemp("ttl") / "gateway.toml", extra_gateway=f"token_ttl = {TTL}")
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(sqlite_url, cfg), workers=1, log_path=ARTIFACTS / f"token-expiry-{os.getpid()}.log").start()
    yield srv
    srv.stop()


def mint(server: Server, job_id: str, ttl: int | None = None) -> dict[str, Any]:
    """A job token from POST /api/tokens: {token, expires_at}."""
    body: dict[str, Any] = {"job": job_id, "scopes": ["read"]}
    if ttl is not None:
        body["ttl"] = ttl
    r = requests.post(server.url + "/api/tokens", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def expired_frame(job_id: str) -> Any:
    return lambda f: f == {"type": "error", "job": job_id, "code": "token_expired"}


def test_a_websocket_subscription_ends_at_its_tokens_expiry_and_the_socket_closes(short_ttl: Server) -> None:
    reg = register(short_ttl.url)
    job_id, expires = reg["job"]["id"], reg["token_expires_at"]
    w = Watcher(short_ttl.url)
    try:
        w.subscribe(job_id, reg["token"])
        w.wait_for(job_frame(job_id, state="queued"))
        w.wait_for(expired_frame(job_id), timeout=TTL + 10)
        assert time.time() >= expires  # never before the token's own second is over
        assert w.closed.wait(10), "the socket stayed open with no subscription left"
    finally:
        w.close()


def test_a_renewed_subscription_outlives_the_first_token_and_others_on_the_socket_end(short_ttl: Server) -> None:
    """Two jobs on one socket, both with short tokens; one is renewed with a long token before
    its expiry. The other's token_expired proves the expiry passed; the renewed one still gets
    its changes, and the socket stays open for it."""
    kept, dropped = register(short_ttl.url), register(short_ttl.url)
    kept_id, dropped_id = kept["job"]["id"], dropped["job"]["id"]
    w = Watcher(short_ttl.url)
    try:
        w.subscribe(kept_id, kept["token"])
        w.wait_for(job_frame(kept_id))
        short = mint(short_ttl, dropped_id, ttl=TTL + 1)  # expires after the first token
        w.subscribe(dropped_id, short["token"])
        w.wait_for(job_frame(dropped_id))
        w.subscribe(kept_id, mint(short_ttl, kept_id, ttl=600)["token"], since=kept["job"]["version"])
        w.wait_for(expired_frame(dropped_id), timeout=TTL + 12)
        assert time.time() >= max(kept["token_expires_at"], short["expires_at"])
        assert not any(f.get("code") == "token_expired" and f.get("job") == kept_id for f in w.seen)
        post_webhook(short_ttl.url, kept["job"]["external_id"], "processing")
        assert w.wait_for(job_frame(kept_id, state="processing"))
        assert not w.closed.is_set()
    finally:
        w.close()


def test_an_already_expired_token_is_answered_token_expired_so_the_client_can_renew(short_ttl: Server) -> None:
    from itsdangerous import URLSafeSerializer

    from tests.conftest import SECRET_KEY

    reg = register(short_ttl.url)
    job_id = reg["job"]["id"]
    stale = URLSafeSerializer(SECRET_KEY, salt="gateway.job-token.v1").dumps({"j": job_id, "s": ["read"], "x": int(time.time()) - 1})
    w = Watcher(short_ttl.url)
    try:
        w.subscribe(job_id, stale)
        assert w.next() == {"type": "error", "job": job_id, "code": "token_expired"}
        w.subscribe(job_id, mint(short_ttl, job_id, ttl=600)["token"])
        assert w.wait_for(job_frame(job_id))
    finally:
        w.close()


def test_an_sse_stream_ends_with_a_token_expired_event_at_its_tokens_expiry(short_ttl: Server) -> None:
    reg = register(short_ttl.url)
    job_id = reg["job"]["id"]
    sse = SSEReader(short_ttl.url, job_id, reg["token"])
    try:
        first = sse.events.get(timeout=10)
        assert first["event"] == "job" and first["json"]["id"] == job_id
        last = sse.events.get(timeout=TTL + 10)
        assert last["event"] == "token_expired"
        assert last["json"] == {"type": "error", "job": job_id, "code": "token_expired"}
        assert time.time() >= reg["token_expires_at"]
        assert sse.ended.wait(10), "the stream went on after token_expired"
    finally:
        sse.close()


class _Watcher:
    def expire(self, now: float) -> None:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=60), st.integers(0, 60))
def test_expiries_hand_out_exactly_the_watchers_filed_before_now_and_not_discarded(filed: list[tuple[int, bool]], now: int) -> None:
    """Expiries (the per-process schedule): whatever is filed and discarded, take(now) returns
    each remaining watcher filed under a second before ``now`` exactly once, and nothing else."""
    from gateway.relay.expiry import Expiries

    schedule = Expiries()
    watchers = [(_Watcher(), at, dropped) for at, dropped in filed]
    for w, at, _ in watchers:
        schedule.add(at, w)
    for w, at, dropped in watchers:
        if dropped:
            schedule.discard(at, w)
    due = schedule.take(now)
    expected = [w for w, at, dropped in watchers if not dropped and at < now]
    assert sorted(map(id, due)) == sorted(map(id, expected))
    assert schedule.take(now) == []
    assert len(schedule) == sum(1 for _, at, dropped in watchers if not dropped and at >= now)
