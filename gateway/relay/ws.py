"""``/ws``: one WebSocket watches many jobs (contract §4).

flask-sock/simple-websocket do the handshake (wsproto underneath); from then on this module
owns the socket: the handshake's wsproto ``Connection`` parses the client's frames, and
everything the server writes goes through ``Detached.write`` (non-blocking, ordered, a bounded
backlog; see detached.py), snapshot frames encoded once for every watcher by the hub. A reader
too far behind is disconnected (it resubscribes with ``since``).

Under gunicorn's gevent worker an idle connection holds no greenlet: the socket leaves the
request after the handshake and the event loop watches it; a greenlet exists only while
something the client sent is being handled. Under any other server the request's own thread
reads the socket until it closes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, request
from flask_sock import Sock
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from gateway.errors import Forbidden, GatewayError
from gateway.http import error_response, origin_allowed_for
from gateway.ids import JOB_ID_RE
from gateway.limits import SOCKET, hand_over_connection_slot, long_lived, public
from gateway.relay.detached import Detached, take_socket
from gateway.relay.hub import Snapshot, ws_text_frame

if TYPE_CHECKING:
    from wsproto.connection import Connection as Protocol

    from gateway.relay.relay import Relay

log = logging.getLogger("gateway.relay")

PING_FRAME = b"\x89\x00"  # an empty server ping
FRAME_COST = 6  # bytes a client frame costs at least (2 header + 4 mask), counted even when empty
MAX_FRAGMENTS = 64  # frames one message may arrive in
#: a connection's budgets, as token buckets (burst, refill per second); spent, it closes with 1008.
#: Every frame (message parts, pings) spends a FRAME token; every subscription that reads a
#: snapshot spends a READ token too: a page subscribing to its jobs never meets either, a
#: subscribe/unsubscribe loop meets READ as it would meet 429 over HTTP.
FRAME_BURST, FRAME_RATE = 5000, 1000.0
READ_BURST, READ_RATE = 200, 20.0


class Budget:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` a second."""

    __slots__ = ("burst", "rate", "refilled", "tokens")

    def __init__(self, burst: int, rate: float):
        self.burst, self.rate = float(burst), rate
        self.tokens, self.refilled = float(burst), time.monotonic()

    def spend(self) -> bool:
        """Take one token; False when none is left."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _NoReader:
    """simple-websocket's reader thread, never started: ``Connection`` reads the socket itself."""

    name = "gateway-ws"

    def __init__(self, target: Any):
        pass

    def start(self) -> None:
        pass


class Connection(Detached):
    """One WebSocket: its subscriptions (job id → newest version sent) and the wsproto state of
    its frames, on a ``Detached`` socket."""

    __slots__ = ("due", "expiries", "frames", "parts", "parts_bytes", "pinged", "pong_received", "proto", "reads", "relay", "subs")

    def __init__(self, relay: Relay, proto: Protocol, sock: Any):
        super().__init__(sock)
        self.relay = relay
        self.proto = proto
        self.subs: dict[str, int] = {}
        self.pinged = False
        self.pong_received = True
        self.parts: list[Any] | None = None  # a message arriving in several frames
        self.parts_bytes = 0
        self.frames = Budget(FRAME_BURST, FRAME_RATE)
        self.reads = Budget(READ_BURST, READ_RATE)
        # job id → its token's expiry, for subscriptions made with a job token: a (job, expiry)
        # pair while there is one (the usual browser), a dict for several, None for none
        self.expiries: tuple[str, int] | dict[str, int] | None = None
        self.due: int | None = None  # the second this connection is filed under in relay.expiries

    # -- serving ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """Read and handle messages in the calling thread until the client goes away."""
        self._opened()
        try:
            while self._pump():
                pass
        finally:
            self.finish()

    def detach(self, loop: Any, sock: Any, on_close: Callable[[], None] | None) -> None:
        """Serve from the event loop from now on (``take_socket``); the request may end."""
        self._opened()
        self.attach(loop, sock, on_close)

    def _opened(self) -> None:
        self.relay.start()
        self.relay.gw.metrics.ws_connections.inc()
        self.relay.connections.add(self)

    def _received(self, data: bytes) -> bool:
        self.proto.receive_data(data)
        return self._act()

    def _act(self) -> bool:
        """Answer the frames received so far (RFC 6455 control frames, messages); False when the
        connection is to close."""
        try:
            for event in self.proto.events():
                if not self.frames.spend():
                    self._over_budget("frame")
                    return False
                if isinstance(event, (TextMessage, BytesMessage)):
                    if not self._message_part(event):
                        return False
                elif isinstance(event, Ping):
                    self.write(self.proto.send(event.response()))
                elif isinstance(event, Pong):
                    self.pong_received = True
                elif isinstance(event, CloseConnection):  # the client's close, or a protocol error
                    self.write(self.proto.send(event.response()))
                    return False
        except LocalProtocolError:
            return False
        return True

    def _over_budget(self, what: str) -> None:
        log.info("websocket %s budget spent; closing", what)
        self.end(self.proto.send(CloseConnection(CloseReason.POLICY_VIOLATION, "Too many messages")))

    def _message_part(self, event: TextMessage | BytesMessage) -> bool:
        """Collect a message's frames; over the hard ceiling (frames counted with their headers,
        so empty ones cost too) or MAX_FRAGMENTS frames, close with 1009."""
        self.parts_bytes += len(event.data) + FRAME_COST
        fragments = len(self.parts) + 1 if self.parts is not None else 1
        if self.parts_bytes > hard_limit(self.relay.gw.config) or fragments > MAX_FRAGMENTS:
            self.write(self.proto.send(CloseConnection(CloseReason.MESSAGE_TOO_BIG, "Message is too big")))
            return False
        if event.message_finished and self.parts is None:
            message: Any = event.data
        else:
            if self.parts is None:
                self.parts = []
            self.parts.append(event.data)
            if not event.message_finished:
                return True
            message = ("" if isinstance(event, TextMessage) else b"").join(self.parts)
            self.parts = None
        self.parts_bytes = 0
        self.handle(message)
        return True

    def _finished(self) -> None:
        """Forget every subscription."""
        relay = self.relay
        if self not in relay.connections:
            return  # finished already
        relay.connections.discard(self)
        if self.due is not None:
            relay.expiries.discard(self.due, self)
        for job in list(self.subs):
            relay.unwatch(job, self)
        relay.gw.metrics.ws_subscriptions.dec(len(self.subs))
        relay.gw.metrics.ws_connections.dec()
        self.subs.clear()

    # -- writing ---------------------------------------------------------------------------------

    def send_message(self, message: dict[str, Any]) -> None:
        """A protocol message (pending, error) as one text frame."""
        self.write(ws_text_frame(json.dumps(message, separators=(",", ":")).encode()))

    def error(self, job: Any, code: str) -> None:
        """An error frame; ``job`` echoed when the message named one plausibly, else null."""
        named = job if isinstance(job, str) and len(job) <= 64 else None
        self.send_message({"type": "error", "job": named, "code": code})

    def going_away(self) -> None:
        """The process is shutting down: close with 1001, the client reconnects elsewhere."""
        if not self.closed:
            self.end(self.proto.send(CloseConnection(CloseReason.GOING_AWAY, "server restarting")))

    def ping(self) -> None:
        """Called every ping interval: drop the connection if the last ping got no pong."""
        if self.pinged and not self.pong_received:
            log.info("websocket ping timeout; disconnecting")
            self.abort()
            return
        self.pinged = True
        self.pong_received = False
        self.write(PING_FRAME)

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
        config = self.relay.gw.config
        if isinstance(data, bytes) or len(data) > config.ws_max_message_bytes:
            return self.error(None, "invalid_message")
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            return self.error(None, "invalid_message")
        if not isinstance(msg, dict):
            return self.error(None, "invalid_message")
        job = msg.get("job")
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe") or not isinstance(job, str) or not JOB_ID_RE.match(job):
            return self.error(job, "invalid_message")
        if kind == "unsubscribe":
            self._ends_at(job, None)
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
        except GatewayError as exc:
            return self.error(job, "token_expired" if exc.code == "token_expired" else "forbidden")
        if not who.can(job, "read"):
            return self.error(job, "forbidden")
        return self.subscribe(job, -1 if since is None else since, who.expires)

    def subscribe(self, job: str, since: int, expires: int | None = None) -> None:
        """Watch ``job`` until ``expires`` (a job token's expiry; None: no end); its snapshot now
        if newer than ``since``, or ``pending`` if not known yet. Subscribing again with a new
        token moves the end."""
        if job not in self.subs:
            if len(self.subs) >= self.relay.gw.config.ws_max_subscriptions:
                return self.error(job, "too_many_subscriptions")
            self.subs[job] = since
            self.relay.watch(job, self)
            self.relay.gw.metrics.ws_subscriptions.inc()
        else:
            self.subs[job] = since
        self._ends_at(job, expires)
        if not self.reads.spend():
            return self._over_budget("snapshot read")
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


    # -- token expiry (relay.expiries calls ``expire``) ------------------------------------------------

    def _ends_at(self, job: str, expires: int | None) -> None:
        """Remember when ``job``'s subscription ends (None: never); file the connection under
        its earliest end."""
        ends = self._expiry_items()
        ends.pop(job, None)
        if expires is not None:
            ends[job] = expires
        self._keep_expiries(ends)
        if expires is not None and (self.due is None or expires < self.due):
            if self.due is not None:
                self.relay.expiries.discard(self.due, self)
            self.due = expires
            self.relay.expiries.add(expires, self)

    def _expiry_items(self) -> dict[str, int]:
        held = self.expiries
        if held is None:
            return {}
        return dict([held]) if isinstance(held, tuple) else held

    def _keep_expiries(self, ends: dict[str, int]) -> None:
        self.expiries = None if not ends else next(iter(ends.items())) if len(ends) == 1 else ends

    def expire(self, now: float) -> None:
        """End the subscriptions whose token expired before ``now``, each with a ``token_expired``
        error frame; with none left, close the connection (1008). A subscription renewed with a
        later token stays, and the connection is filed under its next end."""
        self.due = None
        if self.closed or not self.expiries:
            return
        ends = self._expiry_items()
        for job, at in list(ends.items()):
            if at >= now:
                continue
            del ends[job]
            if self.subs.pop(job, None) is not None:
                self.relay.unwatch(job, self)
                self.relay.gw.metrics.ws_subscriptions.dec()
            self.error(job, "token_expired")
        self._keep_expiries(ends)
        if ends:
            self.due = min(ends.values())
            self.relay.expiries.add(self.due, self)
        elif not self.subs:
            self.end(self.proto.send(CloseConnection(CloseReason.POLICY_VIOLATION, "token expired")))


def hard_limit(config: Any) -> int:
    """Messages over this many bytes close the connection with 1009; between the configured size
    and this ceiling the client gets an error frame and keeps its subscriptions."""
    return max(64 * 1024, 8 * int(config.ws_max_message_bytes))


def init_ws(app: Flask, relay: Relay) -> None:
    """Register ``/ws`` with its origin check (before the upgrade)."""
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": None,  # pings come from one pinger per process (Relay._ping_forever)
        "thread_class": _NoReader,
    }
    bp = Blueprint("relay_ws", __name__)
    sock = Sock()

    @bp.before_request  # after the app's own hooks (request id), before the handshake
    def _before_upgrade() -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed_for(origin, relay.gw.config.allowed_origins, request.host_url):
            raise Forbidden("this origin may not open a WebSocket here", code="origin_not_allowed")
        # No permessage-deflate: the server's frames are encoded once for every watcher and
        # never compressed, and the client's few small messages are not worth the inflater
        # (about 10 KB) a connection would hold for its whole life.
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)

    @bp.errorhandler(RemoteProtocolError)
    def _not_an_upgrade(exc: RemoteProtocolError) -> Any:  # e.g. no Sec-WebSocket-Key
        return error_response(400, "invalid_upgrade", f"not a valid WebSocket upgrade request: {exc}")

    @sock.route("/ws", bp=bp)  # type: ignore[untyped-decorator]  # flask-sock ships no type hints
    @public  # flask-sock's wrapper copies these marks (functools.wraps)
    @long_lived(SOCKET)
    def ws_route(ws: Any) -> None:
        """One browser's WebSocket: detached from the request under gevent, else served here."""
        conn = Connection(relay, ws.ws.connection, ws.sock)
        taken = take_socket(request.environ) if ws.mode == "gunicorn" else None
        ws.connected = False  # this module answers and sends close frames, never flask-sock
        if taken is None:
            conn.serve()
        else:
            loop, raw = taken
            conn.detach(loop, raw, hand_over_connection_slot())

    app.register_blueprint(bp)
