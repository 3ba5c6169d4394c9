"""``/ws``: one WebSocket watches many jobs (contract §4).

flask-sock/simple-websocket do the handshake, read frames, answer pings and send the server's
own pings. Everything this module writes goes through ``Connection.write``: a non-blocking
send of frames encoded once per snapshot (the hub hands the same bytes to every watcher);
what the kernel cannot take at once waits in a small per-connection backlog drained by its
own greenlet, so one slow reader never stalls the fan-out to the others, and a reader that
falls too far behind is disconnected (it resubscribes with ``since``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, request
from flask_sock import Sock

from gateway.app import origin_allowed
from gateway.errors import Forbidden, GatewayError
from gateway.relay.hub import Snapshot, ws_text_frame
from gateway.store import JOB_ID_RE

if TYPE_CHECKING:
    from gateway.relay import Relay

log = logging.getLogger("gateway.relay")

MAX_BACKLOG_BYTES = 1024 * 1024
PING_FRAME = b"\x89\x00"  # an empty server ping


class _InlineReader:
    """simple-websocket's reader "thread" that starts none: ``Connection.serve`` runs the reader
    loop in the request's own greenlet, which would otherwise only wait for it. One greenlet
    (and one Thread object) less per connection."""

    name = "gateway-ws-reader"

    def __init__(self, target: Any):
        self.target = target

    def start(self) -> None:
        pass

    def run(self) -> None:
        self.target()


class _Inbox:
    """simple-websocket's "message arrived" event, turned into a call of the connection's handler."""

    def __init__(self) -> None:
        self.handler: Any = None

    def set(self) -> None:
        if self.handler is not None:
            self.handler()

    def clear(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


class _OrderedSocket:
    """The socket as simple-websocket sees it: its writes (pings, pongs, close) queue behind ours."""

    def __init__(self, conn: Connection, sock: Any):
        self._conn = conn
        self._sock = sock

    def send(self, data: bytes) -> int:
        self._conn.write(data)
        return len(data)

    def recv(self, n: int) -> bytes:
        return self._sock.recv(n)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


class Connection:
    """One WebSocket: its subscriptions (job id → newest version sent) and an ordered writer."""

    def __init__(self, relay: Relay, ws: Any, *, max_subscriptions: int, max_message_bytes: int):
        self.relay = relay
        self.ws = ws
        self.max_subscriptions = max_subscriptions
        self.max_message_bytes = max_message_bytes
        self.subs: dict[str, int] = {}
        self.sock = ws.sock
        self.raw = getattr(ws.sock, "_sock", ws.sock)  # under gevent: the real non-blocking socket
        self.backlog: deque[bytes] | None = None
        self.backlog_bytes = 0
        self.closed = False
        self.pinged = False
        ws.sock = _OrderedSocket(self, ws.sock)
        ws.event.handler = self._drain_input

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the socket in order, without ever blocking the caller."""
        if self.closed:
            return
        if self.backlog is not None:
            self.backlog.append(data)
            self.backlog_bytes += len(data)
            if self.backlog_bytes > MAX_BACKLOG_BYTES:
                log.info("websocket reader too slow; disconnecting")
                self.abort()
            return
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self.backlog = deque([data[sent:]])
            self.backlog_bytes = len(data) - sent
            threading.Thread(target=self._drain, name="gateway-ws-drain", daemon=True).start()

    def _drain(self) -> None:
        try:
            while self.backlog:
                chunk = self.backlog.popleft()
                self.backlog_bytes -= len(chunk)
                self.sock.sendall(chunk)
            self.backlog = None
        except OSError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection; the reader notices and the handler cleans up."""
        if self.closed:
            return
        self.closed = True
        self.backlog = None
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send_message(self, message: dict[str, Any]) -> None:
        """A protocol message (pending, error) as one text frame."""
        self.write(ws_text_frame(json.dumps(message, separators=(",", ":")).encode()))

    def error(self, job: Any, code: str) -> None:
        """An error frame; ``job`` echoed when the message named one plausibly, else null."""
        named = job if isinstance(job, str) and len(job) <= 64 else None
        self.send_message({"type": "error", "job": named, "code": code})

    # -- the hub's side ----------------------------------------------------------------------------

    def deliver(self, snap: Snapshot) -> None:
        """A newer snapshot of a subscribed job: send it unless this socket already has it."""
        sent = self.subs.get(snap.job_id)
        if sent is None or snap.version <= sent:
            return
        self.subs[snap.job_id] = snap.version
        self.write(snap.ws_frame)

    # -- the client's side -------------------------------------------------------------------------

    def handle(self, data: str | bytes) -> None:
        """One client message; any problem is answered with an error frame, never a close."""
        if isinstance(data, bytes) or len(data) > self.max_message_bytes:
            return self.error(None, "invalid_message")
        try:
            msg = json.loads(data)
        except ValueError:
            return self.error(None, "invalid_message")
        if not isinstance(msg, dict):
            return self.error(None, "invalid_message")
        job = msg.get("job")
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe") or not isinstance(job, str) or not JOB_ID_RE.match(job):
            return self.error(job, "invalid_message")
        if kind == "unsubscribe":
            if self.subs.pop(job, None) is not None:
                self.relay.unwatch(job, self)
                self.relay.gw.metrics.ws_subscriptions.dec()
            return None
        since = msg.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            return self.error(job, "invalid_message")
        token = msg.get("token")
        try:
            who = self.relay.gw.auth.principal(token if isinstance(token, str) else None)
        except GatewayError:
            return self.error(job, "forbidden")
        if not who.can(job, "read"):
            return self.error(job, "forbidden")
        return self.subscribe(job, -1 if since is None else since)

    def subscribe(self, job: str, since: int) -> None:
        """Watch ``job``; its snapshot now if newer than ``since``, or ``pending`` if not known yet."""
        if job not in self.subs:
            if len(self.subs) >= self.max_subscriptions:
                return self.error(job, "too_many_subscriptions")
            self.subs[job] = since
            self.relay.watch(job, self)
            self.relay.gw.metrics.ws_subscriptions.inc()
        else:
            self.subs[job] = since
        try:
            snap = self.relay.hub.current(job)
        except Exception:  # database unavailable: the subscription stands, the resync sends the snapshot
            log.warning("snapshot read failed on subscribe", extra={"job_id": job}, exc_info=True)
            return None
        if snap is not None:
            self.deliver(snap)
        elif self.subs.get(job) == since:  # nothing arrived meanwhile: not known yet
            self.send_message({"type": "pending", "job": job})
        return None

    def _drain_input(self) -> None:
        while self.ws.input_buffer and not self.closed:
            self.handle(self.ws.input_buffer.pop(0))

    def ping(self) -> None:
        """Called every ping interval: drop the connection if the last ping got no pong."""
        if self.pinged and not self.ws.pong_received:
            log.info("websocket ping timeout; disconnecting")
            self.abort()
            return
        self.pinged = True
        self.ws.pong_received = False
        self.write(PING_FRAME)

    def serve(self) -> None:
        """Read and handle messages until the client goes away, then forget every subscription."""
        metrics = self.relay.gw.metrics
        self.relay.start()
        metrics.ws_connections.inc()
        self.relay.connections.add(self)
        try:
            self.ws.thread.run()
        finally:
            self.closed = True
            self.relay.connections.discard(self)
            for job in list(self.subs):
                self.relay.unwatch(job, self)
            metrics.ws_subscriptions.dec(len(self.subs))
            metrics.ws_connections.dec()
            self.subs.clear()


def init_ws(app: Flask, relay: Relay) -> None:
    """Register ``/ws`` with its origin check (before the upgrade) and simple-websocket's limits."""
    config = relay.gw.config
    app.config["SOCK_SERVER_OPTIONS"] = {
        # pings come from one pinger per process (Relay.ping_all), not a selector per socket
        "ping_interval": None,
        # a hard ceiling: over it simple-websocket closes with 1009; between the configured
        # size and this ceiling the client gets an error frame and keeps its subscriptions
        "max_message_size": max(64 * 1024, 8 * config.ws_max_message_bytes),
        "receive_bytes": 4096,
        "thread_class": _InlineReader,
        "event_class": _Inbox,
    }
    bp = Blueprint("relay_ws", __name__)
    sock = Sock()

    @bp.before_request  # after the app's own hooks (request id), before the handshake
    def _check_origin() -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin):
            raise Forbidden("this origin may not open a WebSocket here", code="origin_not_allowed")

    @sock.route("/ws", bp=bp)
    def ws_route(ws: Any) -> None:
        """One browser's WebSocket, for as long as it stays open."""
        Connection(
            relay, ws, max_subscriptions=config.ws_max_subscriptions, max_message_bytes=config.ws_max_message_bytes
        ).serve()

    app.register_blueprint(bp)
