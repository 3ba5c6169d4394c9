"""Deploys that keep every tab: a rolling restart (HUP of the gunicorn master, which replaces
every worker) under 500 WebSocket watchers and a steady stream of signed webhooks. Every
watcher is told 1001 "going away" by its leaving worker, reconnects with the last version it
saw, and ends at its job's last version; no acknowledged webhook is lost. A SIGTERM'd worker's
SSE streams end cleanly (the chunked terminator), not with a reset."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import threading
import time
from typing import Any

import pytest
import requests

from bench.wsclient import Conn, Swarm
from tests.conftest import API_KEY, ARTIFACTS, register, server_env, write_config
from tests.loadgen import wait_for
from tests.servers import Server
from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers

WATCHERS = 500
JOBS = 50


class Watchers(Swarm):
    """The swarm, remembering per connection its job, the last version seen and how it closed."""

    def __init__(self, srv: Server, tokens: dict[str, str]):
        super().__init__("127.0.0.1", srv.port, on_text=self._text)
        self.tokens = tokens
        self.version: dict[int, int] = {}  # watcher number → last version seen
        self.job_of: dict[int, str] = {}
        self.close_codes: list[int] = []
        self.told: set[int] = set()  # watchers that got a 1001 at least once
        self.resubscribe: set[int] = set()  # id() of reconnections waiting for their handshake

    def _text(self, conn: Conn, payload: bytes, now: float) -> None:
        msg = json.loads(payload)
        if msg.get("type") == "job":
            self.version[conn.tag] = max(self.version.get(conn.tag, 0), msg["job"]["version"])

    def _frames(self, conn: Conn, now: float) -> None:
        if id(conn) in self.resubscribe:  # a reconnection whose handshake just succeeded
            self.resubscribe.discard(id(conn))
            self.subscribe(conn)
        for code in close_codes_in(conn.buf):  # before the swarm consumes the frames
            self.close_codes.append(code)
            if code == 1001:
                self.told.add(conn.tag)
        super()._frames(conn, now)

    def subscribe(self, conn: Conn) -> None:
        job = self.job_of[conn.tag]
        msg = {"type": "subscribe", "job": job, "token": self.tokens[job]}
        if conn.tag in self.version:
            msg["since"] = self.version[conn.tag]
        self.send_text(conn, json.dumps(msg))

    def reconnect_closed(self) -> int:
        """Open a new connection (same watcher number) for every one that closed; how many."""
        closed = [c for c in self.conns if not c.open and id(c) not in self.resubscribe]
        for old in closed:
            self.conns.remove(old)
            try:
                self.sel.unregister(old.sock)
            except (KeyError, ValueError):
                pass  # the swarm already dropped it (the server closed the socket)
            old.sock.close()
            sock = socket.create_connection((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sock.sendall(self.request(0).encode())
            new = Conn(sock, tag=old.tag)
            self.conns.append(new)
            self.resubscribe.add(id(new))
            self.sel.register(sock, selectors.EVENT_READ, new)
        return len(closed)


def close_codes_in(buf: bytearray) -> list[int]:
    """The status codes of the complete close frames in ``buf`` (server frames: unmasked)."""
    codes, off = [], 0
    while len(buf) - off >= 2:
        n, head = buf[off + 1] & 0x7F, 2
        if n == 126:
            if len(buf) - off < 4:
                break
            n, head = int.from_bytes(buf[off + 2:off + 4], "big"), 4
        elif n == 127:
            if len(buf) - off < 10:
                break
            n, head = int.from_bytes(buf[off + 2:off + 10], "big"), 10
        if len(buf) - off < head + n:
            break
        if buf[off] & 0x0F == 0x8 and n >= 2:
            codes.append(int.from_bytes(buf[off + head:off + head + 2], "big"))
        off += head + n
    return codes


@pytest.fixture
def pg_server(pg_url: str, tmp_path: Any) -> Any:
    ARTIFACTS.mkdir(exist_ok=True)
    # 500 watchers from one address: the per-address limits are not what this test is about
    unlimited = "max_connections_per_address = 0\nrate_limit_public_per_address = 0"
    srv = Server(server_env(pg_url, write_config(tmp_path / "gw.toml", extra_gateway=unlimited)), workers=2,
                 log_path=ARTIFACTS / "deploys.log").start()
    yield srv
    srv.stop()


def test_a_rolling_restart_keeps_every_watcher_and_every_webhook(pg_server):
    regs = [register(pg_server.url) for _ in range(JOBS)]
    tokens = {r["job"]["id"]: r["token"] for r in regs}
    swarm = Watchers(pg_server, tokens)
    conns = swarm.connect(WATCHERS)
    for conn in conns:
        swarm.job_of[conn.tag] = regs[conn.tag % JOBS]["job"]["id"]
        swarm.subscribe(conn)
    assert swarm.run_until(lambda: len(swarm.version) == WATCHERS, 60), "every watcher has its first snapshot"

    acknowledged: dict[str, int] = {}  # external id → the highest progress the gateway acknowledged
    stop = threading.Event()

    def send() -> None:  # a steady provider: each job's progress goes up; a refused try is tried again
        step = 0
        while not stop.is_set():
            step += 1
            reg = regs[step % JOBS]
            ext = reg["job"]["external_id"]
            body = standard_body(ext, "processing", occurred_at=iso_now(), progress={"current": step, "total": 1_000_000})
            try:
                r = requests.post(f"{pg_server.url}/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10)
            except requests.RequestException:
                continue
            if r.status_code == 200:
                acknowledged[ext] = step
            time.sleep(0.02)  # the provider's pace (about 50 webhooks/s), not synchronisation

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    old = set(pg_server.worker_pids())
    wait_for(lambda: len(acknowledged) >= JOBS // 2, 30, "webhooks flowing before the restart")
    pg_server.proc.send_signal(signal.SIGHUP)  # the master replaces every worker, one generation after the other
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (set(pg_server.worker_pids()) & old or len(swarm.told) < WATCHERS):
        swarm.poll(0.05)
        swarm.reconnect_closed()
    assert not set(pg_server.worker_pids()) & old, "every worker was replaced"
    wait_for(lambda: len(acknowledged) >= JOBS, 30, "webhooks flowing after the restart")
    stop.set()
    sender.join(15)

    # every watcher was told to go (one that reconnected to a worker still leaving is told again)
    assert len(swarm.told) == WATCHERS and set(swarm.close_codes) == {1001}, f"closes: {sorted(set(swarm.close_codes))}, told {len(swarm.told)}"
    finals = {}
    for reg in regs:
        job = requests.get(f"{pg_server.url}/api/jobs/{reg['job']['id']}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
        finals[job["id"]] = job["version"]
        ext = reg["job"]["external_id"]
        if ext in acknowledged:  # no acknowledged webhook lost: the job shows the last one
            assert job["progress"]["current"] == acknowledged[ext], job

    def everyone_current() -> bool:
        swarm.reconnect_closed()
        return all(swarm.version.get(i) == finals[swarm.job_of[i]] for i in range(WATCHERS))

    assert swarm.run_until(everyone_current, 60), "every watcher ends at its job's last version"
    swarm.close()


def test_a_leaving_worker_ends_its_sse_streams_cleanly(pg_server):
    reg = register(pg_server.url)
    r = requests.get(f"{pg_server.url}/api/jobs/{reg['job']['id']}/stream", params={"token": reg["token"]}, stream=True, timeout=30)
    assert r.status_code == 200
    lines = r.iter_lines()
    assert next(line for line in lines if line.startswith(b"data:"))  # the snapshot
    pg_server.proc.send_signal(signal.SIGHUP)
    rest = list(lines)  # ends when the worker closes the stream; a reset would raise ChunkedEncodingError
    assert all(not line.startswith(b"data:") or b"version" in line for line in rest)
