"""Minimal many-connection WebSocket and SSE clients for benchmarks: one thread, one epoll loop,
raw sockets. They hold thousands of connections with little CPU and timestamp every text
frame (every SSE event) on arrival, so the client is not what the figures measure."""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEY = base64.b64encode(b"bench-client-key").decode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked, final client frame (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


@dataclass
class Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    open: bool = False
    tag: Any = None
    stream: bytearray = field(default_factory=bytearray)  # SSE: the body with chunk framing removed


class Swarm:
    """Many WebSocket connections to one server, driven by ``run_until``."""

    def __init__(
        self, host: str, port: int, path: str = "/ws", on_text: Callable[[Conn, bytes, float], None] | None = None, source: str | None = None
    ):
        self.host, self.port, self.path = host, port, path
        self.source = source  # a loopback source address (127.0.0.2, ...): ~28k ephemeral ports each
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.on_text = on_text
        self.opened = 0
        self.failed = 0

    def connect(self, n: int, tag_of: Callable[[int], Any] = lambda i: i, batch: int = 200, timeout: float = 120) -> list[Conn]:
        """Open ``n`` connections, at most ``batch`` handshakes in flight; the new ones."""
        deadline = time.monotonic() + timeout
        base_open, base_failed, first = self.opened, self.failed, len(self.conns)
        started = 0
        while True:
            finished = (self.opened - base_open) + (self.failed - base_failed)
            if finished >= n:
                break
            if time.monotonic() > deadline:
                break
            while started < n and started - finished < batch:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.source:
                    s.bind((self.source, 0))
                s.connect((self.host, self.port))
                s.setblocking(False)
                s.sendall(self.request(started).encode())
                conn = Conn(s, tag=tag_of(started))
                self.conns.append(conn)
                self.sel.register(s, selectors.EVENT_READ, conn)
                started += 1
            self.poll(0.05)
        if self.opened - base_open < n:
            raise RuntimeError(f"opened {self.opened - base_open} of {n} connections ({self.failed - base_failed} failed)")
        return self.conns[first:]

    def request(self, i: int) -> str:
        """The opening request of the ``i``-th connection: a WebSocket upgrade."""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def accepted(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 101")

    def send_text(self, conn: Conn, text: str) -> None:
        conn.sock.sendall(client_frame(text.encode()))

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            conn: Conn = key.data
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            now = time.perf_counter()
            if not data:
                self.sel.unregister(conn.sock)
                conn.sock.close()
                if not conn.open:
                    self.failed += 1
                conn.open = False
                continue
            conn.buf += data
            if not conn.open:
                end = conn.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not self.accepted(bytes(conn.buf[:end])):
                    self.failed += 1
                    self.sel.unregister(conn.sock)
                    conn.sock.close()
                    continue
                del conn.buf[: end + 4]
                conn.open = True
                self.opened += 1
            self._frames(conn, now)

    def _frames(self, conn: Conn, now: float) -> None:
        buf = conn.buf
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                off = 10
            if len(buf) < off + n:
                return
            payload = bytes(buf[off : off + n])
            del buf[: off + n]
            if opcode == 0x9:
                conn.sock.sendall(client_frame(payload, 0xA))
            elif opcode == 0x1 and self.on_text is not None:
                self.on_text(conn, payload, now)
            elif opcode == 0x8:
                conn.open = False

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.05))
        return True

    def close(self) -> None:
        for conn in self.conns:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
        self.conns.clear()


class SSESwarm(Swarm):
    """Many Server-Sent Events streams to one server: connection ``i`` opens ``paths[i % len(paths)]``;
    ``on_text`` gets the data of every ``job`` event (chunked transfer coding is undone)."""

    def __init__(self, host: str, port: int, paths: list[str], on_text: Callable[[Conn, bytes, float], None] | None = None,
                 source: str | None = None):
        super().__init__(host, port, on_text=on_text, source=source)
        self.paths = paths

    def request(self, i: int) -> str:
        return f"GET {self.paths[i % len(self.paths)]} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n\r\n"

    def accepted(self, head: bytes) -> bool:
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        return b"transfer-encoding: chunked" in head.lower()

    def _frames(self, conn: Conn, now: float) -> None:
        buf = conn.buf
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            if size == 0:  # the last chunk: the server ended the stream
                conn.open = False
                del buf[:]
                break
            if len(buf) < line_end + 2 + size + 2:
                break
            conn.stream += buf[line_end + 2 : line_end + 2 + size]
            del buf[: line_end + 2 + size + 2]
        stream = conn.stream
        while (end := stream.find(b"\n\n")) >= 0:
            event = bytes(stream[:end])
            del stream[: end + 2]
            if b"event: job" in event and self.on_text is not None:
                data = next((ln[6:] for ln in event.split(b"\n") if ln.startswith(b"data: ")), b"")
                self.on_text(conn, data, now)


def job_of(payload: bytes) -> dict[str, Any] | None:
    msg = json.loads(payload)
    return msg.get("job") if msg.get("type") == "job" else None
