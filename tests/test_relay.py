"""The relay end to end: two real gunicorn instances (2 gevent workers each) on one database,
webhooks to instance A, watchers on instance B over WebSocket, SSE and long-poll; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
import websocket
from hypothesis import given
from hypothesis import strategies as st

from gateway.relay.bus import notices, parse_notice
from gateway.relay.bus_pg import LISTENER_NAME
from gateway.store import Change
from tests.conftest import API_KEY, ARTIFACTS, register, server_env, write_config
from tests.relay_helpers import SSEReader, Watcher, job_frame, post_webhook, ws_url
from tests.servers import Server

RELAY_SETTINGS = """
ws_max_subscriptions = 5
ws_max_message_bytes = 1024
ws_ping_interval = 1
sse_heartbeat = 1
resync_interval = 5
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Server, Server]]]:
    running: dict[str, tuple[Server, Server]] = {}
    yield running
    for a, b in running.values():
        a.stop()
        b.stop()


@pytest.fixture
def pair(db_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, Server]:
    return _pair(db_url, pairs, tmp_path_factory)


@pytest.fixture(params=["native", "redis"])
def bus_pair(request: pytest.FixtureRequest, db_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, Server]:
    """A pair on the database's own bus, and a pair on the Redis bus: the cross-instance tests run on both."""
    if request.param == "redis":
        return _pair(db_url, pairs, tmp_path_factory, redis_url=request.getfixturevalue("redis_url"))
    return _pair(db_url, pairs, tmp_path_factory)


def _pair(
    db_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory, redis_url: str | None = None
) -> tuple[Server, Server]:
    """Instance A (takes the webhooks) and instance B (holds the watchers), sharing one database
    (and, with ``redis_url``, one Redis bus)."""
    key = f"{db_url} {redis_url or ''}"
    if key not in pairs:
        d = tmp_path_factory.mktemp("relay")
        settings = RELAY_SETTINGS + (f'bus = "redis"\nredis_url = "{redis_url}"\n' if redis_url else "")
        cfg = write_config(d / "gateway.toml", extra_gateway=settings)
        ARTIFACTS.mkdir(exist_ok=True)
        tag = ("pg" if "postgres" in db_url else "sqlite") + ("-redis" if redis_url else "")
        a = Server(server_env(db_url, cfg), log_path=ARTIFACTS / f"relay-{tag}-a-{os.getpid()}.log").start()
        b = Server(server_env(db_url, cfg), log_path=ARTIFACTS / f"relay-{tag}-b-{os.getpid()}.log").start()
        pairs[key] = (a, b)
    return pairs[key]


@pytest.fixture
def watcher_factory() -> Iterator[Any]:
    made: list[Watcher] = []

    def make(base: str, **kw: Any) -> Watcher:
        w = Watcher(base, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def etag(job: dict[str, Any]) -> str:
    return f'"{job["id"]}.{job["version"]}"'


class LongPoll(threading.Thread):
    """``GET /api/jobs/<id>?wait=N`` with If-None-Match, in the background."""

    def __init__(self, base: str, job: dict[str, Any], token: str, wait: float = 20):
        super().__init__(daemon=True)
        self.args = (base, job, token, wait)
        self.response: requests.Response | None = None
        self.start()

    def run(self) -> None:
        base, job, token, wait = self.args
        self.response = requests.get(
            f"{base}/api/jobs/{job['id']}", params={"wait": wait, "token": token}, headers={"If-None-Match": etag(job)}, timeout=wait + 10
        )


# -- fan-out across instances -------------------------------------------------------------------------


def test_webhook_on_a_reaches_ws_sse_and_long_poll_on_b(bus_pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = bus_pair
    reg = register(a.url)
    job, token = reg["job"], reg["token"]
    ws = watcher_factory(b.url)
    ws.subscribe(job["id"], token)
    assert ws.wait_for(job_frame(job["id"]))["job"]["state"] == "queued"
    sse = SSEReader(b.url, job["id"], token)
    assert sse.wait_for(lambda e: e["json"]["version"] == job["version"])["event"] == "job"
    poll = LongPoll(b.url, job, token)

    post_webhook(a.url, job["external_id"], "processing", progress={"current": 3, "total": 10, "step": "rows"})

    got = ws.wait_for(job_frame(job["id"], state="processing"))["job"]
    assert got["progress"] == {"current": 3, "total": 10, "step": "rows"} and got["version"] == job["version"] + 1
    event = sse.wait_for(lambda e: e["json"]["state"] == "processing")
    assert event["id"] == str(got["version"]) and event["event"] == "job"
    poll.join(20)
    assert poll.response is not None and poll.response.status_code == 200
    assert poll.response.json()["state"] == "processing"
    assert poll.response.headers["ETag"] == etag(got)

    post_webhook(a.url, job["external_id"], "complete", offset_ms=5, result={"url": "https://example.com/r"})
    done = ws.wait_for(job_frame(job["id"], state="complete"))["job"]
    assert done["result"] == {"url": "https://example.com/r"}
    sse.wait_for(lambda e: e["json"]["state"] == "complete")
    assert sse.ended.wait(10), "the SSE stream stays open after complete"
    assert sse.retry is not None and sse.retry > 0


def test_many_jobs_on_one_connection_each_get_their_own_changes(bus_pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = bus_pair
    regs = [register(a.url) for _ in range(3)]
    ws = watcher_factory(b.url)
    for reg in regs:
        ws.subscribe(reg["job"]["id"], reg["token"])
    for reg in regs:
        ws.wait_for(job_frame(reg["job"]["id"], version=1))
    for i, reg in enumerate(regs):
        post_webhook(a.url, reg["job"]["external_id"], "processing", progress={"current": i, "total": 9})
    for i, reg in enumerate(regs):
        assert ws.wait_for(job_frame(reg["job"]["id"], state="processing"))["job"]["progress"]["current"] == i


def test_queue_positions_move_for_the_jobs_behind(bus_pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = bus_pair
    queue = "q-" + uuid.uuid4().hex[:8]
    regs = [register(a.url, queue=queue) for _ in range(3)]
    ws = watcher_factory(b.url)
    for reg in regs[1:]:
        ws.subscribe(reg["job"]["id"], reg["token"])
    ws.wait_for(job_frame(regs[2]["job"]["id"], queue__position=3))
    post_webhook(a.url, regs[0]["job"]["external_id"], "processing")
    ws.wait_for_all(job_frame(regs[1]["job"]["id"], queue__position=1), job_frame(regs[2]["job"]["id"], queue__position=2))


# -- WebSocket protocol ---------------------------------------------------------------------------------------


def test_pending_then_snapshot_when_the_job_is_registered_elsewhere(bus_pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = bus_pair
    job_id = "job_pending_" + uuid.uuid4().hex[:10]
    r = requests.post(f"{a.url}/api/tokens", json={"job": job_id}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    token = r.json()["token"]
    ws = watcher_factory(b.url)
    ws.subscribe(job_id, token)
    assert ws.next() == {"type": "pending", "job": job_id}
    register(a.url, id=job_id)
    assert ws.wait_for(job_frame(job_id))["job"]["state"] == "queued"


def test_since_suppresses_a_snapshot_the_client_has(pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = pair
    have, sentinel = register(a.url), register(a.url)
    ws = watcher_factory(b.url)
    ws.subscribe(have["job"]["id"], have["token"], since=have["job"]["version"])
    ws.subscribe(sentinel["job"]["id"], sentinel["token"], since=0)
    # frames on one connection are ordered: a snapshot for `have` would come first
    assert ws.next()["job"]["id"] == sentinel["job"]["id"]
    post_webhook(a.url, have["job"]["external_id"], "processing")
    assert ws.wait_for(job_frame(have["job"]["id"]))["job"]["state"] == "processing"


@pytest.mark.parametrize(
    "message, job",
    [
        ("not json", None),
        ("[1, 2]", None),
        ('{"type": "subscribe"}', None),
        ('{"type": "dance", "job": "job_abc"}', "job_abc"),
        ('{"type": "subscribe", "job": "not-a-job-id", "token": "x"}', "not-a-job-id"),
        ('{"type": "subscribe", "job": "job_abc", "token": "x", "since": "7"}', "job_abc"),
        ('{"type": "subscribe", "job": "job_abc", "token": "x", "since": -1}', "job_abc"),
        (b"\x00\x01binary", None),
        ('{"type": "subscribe", "job": "job_abc", "pad": "' + "x" * 2000 + '"}', None),
    ],
    ids=["not-json", "not-object", "no-job", "unknown-type", "bad-job-id", "since-string", "since-negative", "binary", "too-big"],
)
def test_bad_messages_get_an_error_frame_and_keep_other_subscriptions(
    pair: tuple[Server, Server], watcher_factory: Any, message: str | bytes, job: str | None
) -> None:
    a, b = pair
    reg = register(a.url)
    ws = watcher_factory(b.url)
    ws.subscribe(reg["job"]["id"], reg["token"])
    ws.wait_for(job_frame(reg["job"]["id"]))
    ws.send(message)
    assert ws.next() == {"type": "error", "job": job, "code": "invalid_message"}
    post_webhook(a.url, reg["job"]["external_id"], "processing")
    ws.wait_for(job_frame(reg["job"]["id"], state="processing"))
    assert not ws.closed.is_set()


def test_a_message_over_the_hard_ceiling_closes_with_1009(pair: tuple[Server, Server]) -> None:
    _, b = pair
    conn = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    conn.send("x" * (70 * 1024))
    frame = conn.recv_frame()
    while frame.opcode == websocket.ABNF.OPCODE_PING:
        frame = conn.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1009
    conn.close()


def test_tokens_are_checked_per_subscription(pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = pair
    mine, other = register(a.url), register(a.url)
    ws = watcher_factory(b.url)
    for token in (other["token"], "garbage", None, 42):
        msg: dict[str, Any] = {"type": "subscribe", "job": mine["job"]["id"]}
        if token is not None:
            msg["token"] = token
        ws.send(msg)
        assert ws.next() == {"type": "error", "job": mine["job"]["id"], "code": "forbidden"}
    ws.subscribe(other["job"]["id"], other["token"])  # the same connection can still watch its own
    assert ws.next()["job"]["id"] == other["job"]["id"]
    ws.subscribe(mine["job"]["id"], API_KEY)  # an integrator's API key covers every job
    assert ws.next()["job"]["id"] == mine["job"]["id"]


def test_subscriptions_per_connection_are_bounded(pair: tuple[Server, Server], watcher_factory: Any) -> None:
    a, b = pair
    regs = [register(a.url) for _ in range(6)]
    ws = watcher_factory(b.url)
    for reg in regs[:5]:
        ws.subscribe(reg["job"]["id"], reg["token"])
        ws.wait_for(job_frame(reg["job"]["id"]))
    ws.subscribe(regs[5]["job"]["id"], regs[5]["token"])
    assert ws.next() == {"type": "error", "job": regs[5]["job"]["id"], "code": "too_many_subscriptions"}
    ws.subscribe(regs[0]["job"]["id"], regs[0]["token"], since=0)  # re-subscribing is not a new one
    assert ws.next()["job"]["id"] == regs[0]["job"]["id"]
    ws.send({"type": "unsubscribe", "job": regs[0]["job"]["id"]})
    ws.subscribe(regs[5]["job"]["id"], regs[5]["token"])
    assert ws.next()["job"]["id"] == regs[5]["job"]["id"]
    post_webhook(a.url, regs[0]["job"]["external_id"], "processing")  # unsubscribed: not sent
    post_webhook(a.url, regs[1]["job"]["external_id"], "processing")
    assert ws.wait_for(lambda f: f["type"] == "job" and f["job"]["state"] == "processing")["job"]["id"] == regs[1]["job"]["id"]


def test_foreign_origin_is_refused_before_the_upgrade(pair: tuple[Server, Server]) -> None:
    _, b = pair
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(b.url), timeout=10, origin="https://evil.example")
    assert refused.value.status_code == 403
    allowed = websocket.create_connection(ws_url(b.url), timeout=10, origin="http://127.0.0.1")
    allowed.close()
    no_origin = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    no_origin.close()


def test_a_broken_upgrade_request_is_a_client_error(pair: tuple[Server, Server]) -> None:
    _, b = pair
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}  # no key
    r = requests.get(b.url + "/ws", headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_upgrade"


def test_compression_is_not_negotiated(pair: tuple[Server, Server]) -> None:
    """A browser's permessage-deflate offer is declined: no inflater held per connection."""
    _, b = pair
    with socket.create_connection(("127.0.0.1", b.port), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-extensions" not in head.lower()


def test_server_sends_protocol_pings(pair: tuple[Server, Server]) -> None:
    _, b = pair
    conn = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    frame = conn.recv_frame()  # ws_ping_interval = 1 in this configuration
    assert frame.opcode == websocket.ABNF.OPCODE_PING
    conn.pong(frame.data)
    conn.close()


def test_answered_pings_keep_a_connection_unanswered_ones_drop_it(pair: tuple[Server, Server]) -> None:
    a, b = pair
    reg = register(a.url)
    answering = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    silent = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    try:
        for _ in range(3):  # recv_frame never answers by itself
            frame = answering.recv_frame()
            assert frame.opcode == websocket.ABNF.OPCODE_PING
            answering.pong(frame.data)
        answering.send(json.dumps({"type": "subscribe", "job": reg["job"]["id"], "token": reg["token"]}))
        frame = answering.recv_frame()
        while frame.opcode == websocket.ABNF.OPCODE_PING:
            frame = answering.recv_frame()
        assert json.loads(frame.data)["job"]["id"] == reg["job"]["id"]

        pings = 0
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while pings < 10:
                if silent.recv_frame().opcode == websocket.ABNF.OPCODE_PING:
                    pings += 1
        assert pings >= 1
    finally:
        answering.close()
        silent.close()


def test_a_message_in_several_frames_is_one_message(pair: tuple[Server, Server]) -> None:
    a, b = pair
    reg = register(a.url)
    conn = websocket.create_connection(ws_url(b.url), timeout=10, suppress_origin=True)
    try:
        text = json.dumps({"type": "subscribe", "job": reg["job"]["id"], "token": reg["token"]})
        conn.send_frame(websocket.ABNF.create_frame(text[:20], websocket.ABNF.OPCODE_TEXT, fin=0))
        conn.send_frame(websocket.ABNF.create_frame(text[20:40], websocket.ABNF.OPCODE_CONT, fin=0))
        conn.send_frame(websocket.ABNF.create_frame(text[40:], websocket.ABNF.OPCODE_CONT, fin=1))
        frame = conn.recv_frame()
        while frame.opcode == websocket.ABNF.OPCODE_PING:
            frame = conn.recv_frame()
        assert json.loads(frame.data)["job"]["id"] == reg["job"]["id"]
    finally:
        conn.close()


# -- SSE and long-poll ------------------------------------------------------------------------------------------


def test_sse_resumes_after_last_event_id(pair: tuple[Server, Server]) -> None:
    a, b = pair
    reg = register(a.url)
    job, token = reg["job"], reg["token"]
    sse = SSEReader(b.url, job["id"], token, last_event_id=str(job["version"]))
    assert sse.response.status_code == 200
    assert sse.response.headers["Content-Type"].startswith("text/event-stream")
    assert sse.response.headers["Cache-Control"] == "no-cache"
    assert sse.response.headers["X-Accel-Buffering"] == "no"
    deadline = time.monotonic() + 10
    while not sse.comments and time.monotonic() < deadline:  # sse_heartbeat = 1
        time.sleep(0.05)
    assert sse.comments, "no heartbeat comment"
    post_webhook(a.url, job["external_id"], "processing")
    first = sse.wait_for(lambda e: True)
    assert first["json"]["state"] == "processing", "the version the client already had was sent again"
    sse.close()


def test_sse_for_a_finished_job_already_seen_says_204(pair: tuple[Server, Server]) -> None:
    a, b = pair
    reg = register(a.url)
    post_webhook(a.url, reg["job"]["external_id"], "complete")
    final = requests.get(f"{a.url}/api/jobs/{reg['job']['id']}", params={"token": reg["token"]}, timeout=10).json()
    sse = SSEReader(b.url, reg["job"]["id"], reg["token"], last_event_id=str(final["version"]))
    assert sse.response.status_code == 204
    fresh = SSEReader(b.url, reg["job"]["id"], reg["token"])
    assert fresh.wait_for(lambda e: True)["json"]["state"] == "complete"
    assert fresh.ended.wait(10)


def read_until_closed(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def unchunk(body: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body decoded, and whether it ended with the last (empty) chunk."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, rest == b"\r\n"
        out, body = out + rest[:size], rest[size + 2 :]
    return out, False


def test_an_sse_stream_on_the_wire(pair: tuple[Server, Server]) -> None:
    """The head (with the app's own headers: request id, CORS for an allowed origin), the events
    as HTTP/1.1 chunks, and after ``complete`` the last chunk and the server's close."""
    a, b = pair
    reg = register(a.url)
    job, token = reg["job"], reg["token"]
    post_webhook(a.url, job["external_id"], "complete")
    final = requests.get(f"{a.url}/api/jobs/{job['id']}", params={"token": token}, timeout=10).json()
    with socket.create_connection(("127.0.0.1", b.port), timeout=10) as s:
        s.sendall(f"GET /api/jobs/{job['id']}/stream?token={token} HTTP/1.1\r\nHost: x\r\nOrigin: http://127.0.0.1\r\n"
                  f"X-Request-ID: sse-wire-test\r\nLast-Event-ID: {job['version']}\r\n\r\n".encode())
        answer = read_until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert lines[0] == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/event-stream") and headers["cache-control"] == "no-cache"
    assert headers["x-request-id"] == "sse-wire-test" and headers["access-control-allow-origin"] == "http://127.0.0.1"
    assert headers["transfer-encoding"] == "chunked"
    events, ended = unchunk(body)
    assert ended, "the stream must end with the last chunk"
    blocks = [blk for blk in events.decode().split("\n\n") if blk and not blk.startswith(":")]
    assert blocks[0] == "retry: 2000"
    assert blocks[-1].startswith(f"id: {final['version']}\nevent: job\ndata: ")
    assert json.loads(blocks[-1].split("data: ", 1)[1])["state"] == "complete"


def test_sse_needs_a_token_for_the_job(pair: tuple[Server, Server]) -> None:
    a, b = pair
    mine, other = register(a.url), register(a.url)
    assert requests.get(f"{b.url}/api/jobs/{mine['job']['id']}/stream", timeout=10).status_code == 401
    r = requests.get(f"{b.url}/api/jobs/{mine['job']['id']}/stream", params={"token": other["token"]}, timeout=10)
    assert r.status_code == 403


def test_long_poll_times_out_with_304(pair: tuple[Server, Server]) -> None:
    a, b = pair
    reg = register(a.url)
    poll = LongPoll(b.url, reg["job"], reg["token"], wait=1)
    poll.join(15)
    assert poll.response is not None and poll.response.status_code == 304
    assert poll.response.headers["ETag"] == etag(reg["job"])


def test_long_polls_hold_no_database_connection(pg_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory) -> None:
    """B has two workers with a pool of at most 15 connections each (5 s pool timeout): if a
    waiting long-poll held a connection, 40 of them for 6 s could not all be answered 304."""
    a, b = _pair(pg_url, pairs, tmp_path_factory)
    reg = register(a.url)
    polls = [LongPoll(b.url, reg["job"], reg["token"], wait=6) for _ in range(40)]
    for p in polls:
        p.join(30)
    assert [p.response.status_code for p in polls if p.response is not None] == [304] * 40
    polls = [LongPoll(b.url, reg["job"], reg["token"], wait=25) for _ in range(40)]
    post_webhook(a.url, reg["job"]["external_id"], "processing")
    for p in polls:
        p.join(30)
    assert [p.response.status_code for p in polls if p.response is not None] == [200] * 40
    assert all(p.response.json()["state"] == "processing" for p in polls if p.response is not None)


# -- fan-out resilience ----------------------------------------------------------------------------------------------


def _listener_pids(admin: psycopg.Connection, dbname: str) -> set[int]:
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s", (dbname, LISTENER_NAME)).fetchall()
    return {r[0] for r in rows}


def test_killed_listener_reconnects_and_resyncs(
    pg_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory, watcher_factory: Any
) -> None:
    a, b = _pair(pg_url, pairs, tmp_path_factory)
    reg = register(a.url)
    ws = watcher_factory(b.url)
    ws.subscribe(reg["job"]["id"], reg["token"])
    ws.wait_for(job_frame(reg["job"]["id"]))
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        before = _listener_pids(admin, dbname)
        assert before, "no relay listener connection"
        for pid in before:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # a change committed while B's listener is gone: its NOTIFY reaches nobody on B
        post_webhook(a.url, reg["job"]["external_id"], "processing", progress={"current": 1, "total": 2})
        ws.wait_for(job_frame(reg["job"]["id"], state="processing"), timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (_listener_pids(admin, dbname) - before):
            time.sleep(0.1)
        assert _listener_pids(admin, dbname) - before, "the listener did not reconnect"
    post_webhook(a.url, reg["job"]["external_id"], "processing", offset_ms=5, progress={"current": 2, "total": 2})
    ws.wait_for(job_frame(reg["job"]["id"], progress__current=2))


def test_killed_redis_subscriber_resubscribes_and_resyncs(
    pg_url: str, redis_url: str, pairs: dict[str, tuple[Server, Server]], tmp_path_factory: pytest.TempPathFactory, watcher_factory: Any
) -> None:
    """The Redis twin of the test above: B's subscriber connections are killed; a change
    published meanwhile is lost on the wire but reaches B's watcher through the resync."""
    import redis

    from gateway.relay.bus_redis import SUBSCRIBER_NAME

    a, b = _pair(pg_url, pairs, tmp_path_factory, redis_url=redis_url)
    reg = register(a.url)
    ws = watcher_factory(b.url)
    ws.subscribe(reg["job"]["id"], reg["token"])
    ws.wait_for(job_frame(reg["job"]["id"]))
    admin = redis.Redis.from_url(redis_url)
    ours = [c for c in admin.client_list(_type="pubsub") if c.get("name") == SUBSCRIBER_NAME]
    assert ours, "no relay subscriber connection"
    for c in ours:
        admin.client_kill_filter(_id=c["id"])
    post_webhook(a.url, reg["job"]["external_id"], "processing", progress={"current": 1, "total": 2})
    ws.wait_for(job_frame(reg["job"]["id"], state="processing"), timeout=30)
    deadline = time.monotonic() + 15
    ids = {c["id"] for c in ours}
    while time.monotonic() < deadline and not [c for c in admin.client_list(_type="pubsub") if c.get("name") == SUBSCRIBER_NAME and c["id"] not in ids]:
        time.sleep(0.1)
    assert [c for c in admin.client_list(_type="pubsub") if c.get("name") == SUBSCRIBER_NAME and c["id"] not in ids], "no new subscriber"
    post_webhook(a.url, reg["job"]["external_id"], "processing", offset_ms=5, progress={"current": 2, "total": 2})
    ws.wait_for(job_frame(reg["job"]["id"], progress__current=2))


def test_resync_catches_up_what_the_bus_never_carried(db_url: str, tmp_path: Any) -> None:
    """Two apps on one database with the process-local bus: only B's resync can tell B."""
    from gateway.app import create_app
    from gateway.relay.hub import Mailbox
    from tests.conftest import make_config
    from tests.signing import STANDARD_SECRET, standard_body, standard_headers

    app_a = create_app(make_config(db_url, tmp_path), background=False)
    app_b = create_app(make_config(db_url, tmp_path), background=False)
    for app in (app_a, app_b):
        _local(app)
    reg = register(app_a.test_client())
    relay_b = app_b.extensions["gateway"].relay
    box = Mailbox()
    relay_b.watch(reg["job"]["id"], box)
    assert relay_b.hub.current(reg["job"]["id"]).version == 1
    assert box.wait(5).version == 1
    body = standard_body(reg["job"]["external_id"], "processing")
    assert app_a.test_client().post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body)).status_code == 200
    assert box.wait(0.2) is None  # nothing carried it to B
    resync = next(t for t in app_b.extensions["gateway"].background.tasks if t.name == "relay-resync")
    resync.fn()
    got = box.wait(5)
    assert got is not None and got.job["state"] == "processing" and got.version == 2


def _local(app: Any) -> Any:
    from gateway.relay.bus import LocalBus

    gw = app.extensions["gateway"]
    bus = LocalBus(gw.relay.hub)
    gw.relay.bus = gw.store.bus = bus
    return bus


@given(st.lists(st.tuples(st.from_regex(r"job_[A-Za-z0-9_-]{1,60}", fullmatch=True), st.integers(0, 2**31)), max_size=400))
def test_notify_payloads_round_trip_under_the_limit(pairs_: list[tuple[str, int]]) -> None:
    changes = [Change(j, v) for j, v in pairs_]
    payloads = notices(changes, limit=900)
    assert all(len(p.encode()) <= 900 for p in payloads)
    assert [c for p in payloads for c in parse_notice(p)] == pairs_


# -- conditional polls answered from memory -------------------------------------------------------------------


def _metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


def test_conditional_polls_never_hide_an_acknowledged_change(bus_pair: tuple[Server, Server], db_url: str, request: pytest.FixtureRequest) -> None:
    """Each round: an unchanged job is 304; then a change acknowledged by A is seen by the very
    next conditional poll on B (200 with the new progress), never hidden by a remembered version.
    With a bus that carries every change (PostgreSQL, Redis), B answers 304s from memory."""
    a, b = bus_pair
    reg = register(a.url)
    job, token = reg["job"], reg["token"]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    url = f"{b.url}/api/jobs/{job['id']}"
    first = s.get(url, timeout=10)
    tag = first.headers["ETag"]
    before = _metric(b.url, "gateway_relay_polls_from_memory_total")
    for i in range(30):
        for _ in range(3):
            unchanged = s.get(url, headers={"If-None-Match": tag}, timeout=10)
            assert unchanged.status_code == 304 and unchanged.headers["ETag"] == tag
        # a new label: never coalesced (only progress-only changes of a storming job are)
        post_webhook(a.url, job["external_id"], "processing", offset_ms=i + 1, label=f"step {i}", progress={"current": i, "total": 30})
        changed = s.get(url, headers={"If-None-Match": tag}, timeout=10)
        assert changed.status_code == 200, f"round {i}: the acknowledged change was hidden by a 304"
        assert changed.json()["progress"]["current"] == i and changed.json()["label"] == f"step {i}"
        tag = changed.headers["ETag"]
    from_memory = _metric(b.url, "gateway_relay_polls_from_memory_total") - before
    if request.node.callspec.params["bus_pair"] == "redis" or "postgres" in db_url:
        assert from_memory > 0, "no poll was answered from memory"
    else:
        assert from_memory == 0  # SQLite's change feed has no barrier: every poll reads


# -- progress storms -----------------------------------------------------------------------------------------


def test_a_progress_storm_is_coalesced_and_its_end_is_never_lost(
    bus_pair: tuple[Server, Server], db_url: str, request: pytest.FixtureRequest, watcher_factory: Any
) -> None:
    """100 progress webhooks back to back: B's watcher gets far fewer frames than webhooks
    (PostgreSQL and Redis buses coalesce), still gets the final progress, then the state change."""
    a, b = bus_pair
    reg = register(a.url)
    job = reg["job"]
    ws = watcher_factory(b.url)
    ws.subscribe(job["id"], reg["token"])
    ws.wait_for(job_frame(job["id"]))
    post_webhook(a.url, job["external_id"], "processing", progress={"current": 0, "total": 100})
    ws.wait_for(job_frame(job["id"], progress__current=0))
    from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers

    s = requests.Session()
    started = time.monotonic()
    for i in range(1, 101):
        body = standard_body(job["external_id"], "processing", occurred_at=iso_now(i), progress={"current": i, "total": 100})
        assert s.post(f"{a.url}/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10).status_code == 200
    storm = time.monotonic() - started
    ws.wait_for(job_frame(job["id"], progress__current=100))  # the trailing announcement
    post_webhook(a.url, job["external_id"], "complete", offset_ms=500, result={"ok": True})
    ws.wait_for(job_frame(job["id"], state="complete"))
    frames = [f for f in ws.seen if f.get("type") == "job" and f["job"]["state"] == "processing" and (f["job"]["progress"] or {}).get("current", 0) > 0]
    if request.node.callspec.params["bus_pair"] == "redis" or "postgres" in db_url:
        # per writer process (A has 2 workers): one leading notice, then at most one per 0.1 s
        bound = 2 * (storm / 0.1 + 2)
        assert len(frames) <= bound, f"{len(frames)} frames for 100 progress webhooks in {storm:.2f}s"
        assert len(frames) < 100
