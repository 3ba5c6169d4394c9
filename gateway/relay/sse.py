"""``GET /api/jobs/<id>/stream``: Server-Sent Events for one job (contract §3).

Each event is ``id: <version>``, ``event: job``, ``data: <job JSON>``, encoded once per
snapshot by the hub. ``Last-Event-ID`` (sent by EventSource on reconnect) suppresses
what the client already has; a heartbeat comment keeps proxies from timing the stream out;
the stream ends after ``complete``, and a reconnect that already has the final version gets
204, which tells EventSource to stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from gateway.app import gateway
from gateway.errors import NotFound
from gateway.relay.hub import Mailbox, Snapshot
from gateway.store import JOB_ID_RE

if TYPE_CHECKING:
    from gateway.relay import Relay

bp = Blueprint("relay_sse", __name__)

RETRY_MS = 2000


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() and len(raw) < 12 else -1


@bp.get("/api/jobs/<job_id>/stream")
def stream(job_id: str) -> Response:
    """The job's changes as Server-Sent Events, from whichever process commits them."""
    gw = gateway()
    gw.auth.require_job(request, job_id, "read")
    if not JOB_ID_RE.match(job_id):
        raise NotFound("no such job", code="job_not_found")
    relay: Relay = gw.relay
    last = _last_event_id()
    box = Mailbox()
    relay.watch(job_id, box)
    try:
        snap = relay.hub.current(job_id)
    except BaseException:
        relay.unwatch(job_id, box)
        raise
    if snap is not None and snap.terminal and snap.version <= last:
        relay.unwatch(job_id, box)
        return Response(status=204)
    heartbeat = max(1, min(gw.config.sse_heartbeat, 20))
    body = _events(relay, job_id, box, snap, last, heartbeat)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(body, mimetype="text/event-stream", headers=headers)


def _events(relay: Relay, job_id: str, box: Mailbox, snap: Snapshot | None, last: int, heartbeat: float) -> Iterator[bytes]:
    """The stream's body; it unwatches when it ends or the client goes away (GeneratorExit)."""
    metrics = relay.gw.metrics
    metrics.sse_streams.inc()
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            if snap is not None and snap.version > last:
                yield snap.sse_event
                last = snap.version
                if snap.terminal:
                    return
            snap = box.wait(heartbeat)
            if snap is None:
                yield b": keepalive\n\n"
    finally:
        metrics.sse_streams.dec()
        relay.unwatch(job_id, box)
