"""``GET /api/jobs/<id>/stream``: Server-Sent Events for one job (contract §3).

Each event is ``id: <version>``, ``event: job``, ``data: <job JSON>``, encoded once per
snapshot by the hub. ``Last-Event-ID`` (sent by EventSource on reconnect) suppresses
what the client already has; a heartbeat comment keeps proxies from timing the stream out;
the stream ends after ``complete``, and a reconnect that already has the final version gets
204, which tells EventSource to stop. A stream opened with a job token ends when the token
expires, with a ``token_expired`` event (the client renews its token and opens a new stream).

Under gunicorn's gevent worker (an HTTP/1.1 GET) the stream holds no greenlet: the response
head is written here, the socket leaves the request (see detached.py) and the hub writes each
event straight to it as one HTTP chunk, encoded once for every stream; one heartbeat loop per
process beats every such stream, and a client that leaves is noticed at once by the event
loop. Under any other server the response body is a generator waiting on a ``Mailbox``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.http import http_date

from gateway.context import gateway
from gateway.errors import NotFound
from gateway.http import API_PREFIX
from gateway.ids import JOB_ID_RE
from gateway.limits import STREAM, hand_over_connection_slot, long_lived, public
from gateway.relay.detached import Detached, take_socket
from gateway.relay.hub import Mailbox, Snapshot, http_chunk
from gateway.relay.relay import Relay, heartbeat_seconds

bp = Blueprint("relay_sse", __name__)

RETRY_MS = 2000
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEPALIVE = b": keepalive\n\n"
KEEPALIVE_CHUNK = http_chunk(KEEPALIVE)
LAST_CHUNK = http_chunk(b"")


def token_expired_event(job_id: str) -> bytes:
    """The event that ends a stream whose token expired (EventSource: ``token_expired``)."""
    data = json.dumps({"type": "error", "job": job_id, "code": "token_expired"}, separators=(",", ":"))
    return f"event: token_expired\ndata: {data}\n\n".encode()


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() and len(raw) < 12 else -1


@bp.get(API_PREFIX + "/jobs/<job_id>/stream")
@public
@long_lived(STREAM)
def stream(job_id: str) -> Response:
    """The job's changes as Server-Sent Events, from whichever process commits them."""
    gw = gateway()
    who = gw.auth.require_job(request, job_id, "read")
    if not JOB_ID_RE.match(job_id):
        raise NotFound("no such job", code="job_not_found")
    relay = gw.relay
    last = _last_event_id()
    detach = request.method == "GET" and request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and \
        take_socket(request.environ, dry_run=True) is not None
    watcher: Stream | Mailbox = Stream(relay, job_id, last, who.expires) if detach else Mailbox()
    relay.watch(job_id, watcher)
    try:
        snap = relay.hub.current(job_id)
    except BaseException:
        relay.unwatch(job_id, watcher)
        raise
    if snap is not None and snap.terminal and snap.version <= last:
        relay.unwatch(job_id, watcher)
        return Response(status=204)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if isinstance(watcher, Stream):
        watcher.on_close = hand_over_connection_slot()
        return StreamResponse(watcher, snap, headers=headers, mimetype="text/event-stream")
    body = _events(relay, job_id, watcher, snap, last, heartbeat_seconds(gw.config), who.expires)
    return Response(body, mimetype="text/event-stream", headers=headers)


class Stream(Detached):
    """One detached event stream: the hub's watcher of its job, writing chunks to the socket."""

    __slots__ = ("expires", "job_id", "last", "pending", "relay")

    def __init__(self, relay: Relay, job_id: str, last: int, expires: int | None = None):
        super().__init__()
        self.relay = relay
        self.job_id = job_id
        self.last = last  # the newest version the client has
        self.pending: Snapshot | None = None  # delivered before the socket was ours
        self.expires = expires  # the token's expiry (unix seconds); None: an API key

    def start(self, loop: Any, sock: Any, head: bytes, snap: Snapshot | None) -> None:
        """Write the response head and what the client lacks, then serve from the event loop."""
        self.attach(loop, sock, self.on_close)
        self.relay.start()
        self.relay.gw.metrics.sse_streams.inc()
        self.relay.streams.add(self)
        if self.expires is not None:
            self.relay.expiries.add(self.expires, self)
        self.write(head + http_chunk(RETRY))
        for candidate in (snap, self.pending):
            if candidate is not None:
                self.deliver(candidate)
        self.pending = None

    def deliver(self, snap: Snapshot) -> None:
        """A snapshot from the hub: written as one chunk if newer than what the client has; after
        ``complete`` the stream ends."""
        if self.reader is None:  # the response head is not out yet
            if self.pending is None or snap.version > self.pending.version:
                self.pending = snap
            return
        if snap.version <= self.last or self.closed:
            return
        self.last = snap.version
        if snap.terminal:
            self.end(snap.sse_chunk + LAST_CHUNK)
        else:
            self.write(snap.sse_chunk)

    def beat(self) -> None:
        """A heartbeat comment (called by the relay's heartbeat loop)."""
        self.write(KEEPALIVE_CHUNK)

    def expire(self, now: float) -> None:
        """The token expired (called by the relay's expiry loop): say so, and end the stream."""
        if not self.closed:
            self.end(http_chunk(token_expired_event(self.job_id)) + LAST_CHUNK)

    def going_away(self) -> None:
        """The process is shutting down: end the stream cleanly; EventSource reconnects with its
        Last-Event-ID (the last version it saw)."""
        if not self.closed:
            self.end(LAST_CHUNK)

    def _finished(self) -> None:
        relay = self.relay
        if self.expires is not None:
            relay.expiries.discard(self.expires, self)
        if self in relay.streams:
            relay.streams.discard(self)
            relay.gw.metrics.sse_streams.dec()
        relay.unwatch(self.job_id, self)


class StreamResponse(Response):
    """The response of a detached stream: called by the server, it writes its own head on the
    socket, hands the socket to its ``Stream`` and ends the request (gunicorn takes
    ``StopIteration`` from the application as "this connection is done", as for a WebSocket)."""

    def __init__(self, stream: Stream, snap: Snapshot | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.detached = stream  # not ``self.stream``: that is the Response's body stream
        self.snap = snap

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        taken = take_socket(environ)
        if taken is None:  # cannot happen: the view checked; never leave the watcher behind
            self.detached.finish()
            raise RuntimeError("the stream's socket could not be taken from the request")
        head = [f"HTTP/1.1 {self.status}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        head += ["Transfer-Encoding: chunked", "Connection: close", f"Date: {http_date()}", "", ""]
        self.detached.start(*taken, "\r\n".join(head).encode("latin-1"), self.snap)
        raise StopIteration


def _events(
    relay: Relay, job_id: str, box: Mailbox, snap: Snapshot | None, last: int, heartbeat: float, expires: int | None
) -> Iterator[bytes]:
    """The stream's body; it unwatches when it ends, the token expires or the client goes away
    (GeneratorExit)."""
    metrics = relay.gw.metrics
    metrics.sse_streams.inc()
    try:
        yield RETRY
        while True:
            if snap is not None and snap.version > last:
                yield snap.sse_event
                last = snap.version
                if snap.terminal:
                    return
            wait = heartbeat if expires is None else min(heartbeat, max(0.0, expires + 1 - relay.gw.auth.clock()))
            snap = box.wait(wait)
            if expires is not None and relay.gw.auth.clock() > expires:
                yield token_expired_event(job_id)
                return
            if snap is None:
                yield KEEPALIVE
    finally:
        metrics.sse_streams.dec()
        relay.unwatch(job_id, box)
