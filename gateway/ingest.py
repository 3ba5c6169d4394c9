"""``POST /webhooks/<source>``: verify, dedup, fold, commit, then acknowledge.

Checks run in the contract's order, and the body is never parsed before it is verified:
unknown source 404 (counted, never stored), too large 413, bad signature or stale timestamp 401
(one generic message; a rejected-delivery record without the body, within the source's
``rejected_records_per_minute``, carrying the ids the body claims, unverified), the source's
rate 429 (charged only now, once verified), verified but unreadable or unstorable 400, no job
state 200 ignored, accepted or duplicate 200 only after commit, database down 503 with
Retry-After.

A verified delivery is recorded with its body and headers (replay, gateway/replay.py) and, in
the same transaction, owes its ``delivery.<source>`` messages (gateway/forward_delivery.py).
The parsing and recording a replay repeats live in gateway/recording.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, request
from sqlalchemy.exc import DataError, SQLAlchemyError

from adapters.base import ProviderEvent, WebhookRequest
from gateway import forward_delivery
from gateway.context import gateway
from gateway.errors import GatewayError, PayloadError, PayloadTooLarge, SignatureError
from gateway.http import error_response
from gateway.ids import utcnow
from gateway.limits import charge_source, webhook
from gateway.recording import Recorded, answer_status, any_new, outcome_name, parse_verified, record_events, stored_headers
from gateway.services import Source
from gateway.states import State
from gateway.storable import is_storable
from gateway.store import Writer

bp = Blueprint("ingest", __name__)
log = logging.getLogger("gateway.ingest")


def _read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body over the limit of {limit} bytes")
    if length is None:
        # chunked: Werkzeug will not read an input the server did not mark terminated, but
        # gunicorn de-chunks wsgi.input itself; read it directly, bounded
        body = bytes(request.environ["wsgi.input"].read(limit + 1))
    else:
        body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"body over the limit of {limit} bytes")
    return body


def _public_url(source: Source) -> str:
    """The URL the provider signed: configured for sources behind a proxy, else as received."""
    base = source.config.public_url
    if not base:
        return request.url
    query = request.query_string.decode("latin-1")
    return f"{base}?{query}" if query else base


#: what the caller of a refused delivery is told: it must not name the header the adapter looked
#: for (that fingerprints the adapter); the stored record keeps the precise reason
UNVERIFIED_MESSAGE = "the delivery could not be verified"


def _unknown_source(source_name: str) -> Any:
    """A post to a source that is not configured: counted and sampled in the log, never stored."""
    gw = gateway()
    gw.metrics.webhooks.labels(source="_unknown", outcome="rejected").inc()  # a URL is not a metric label
    if _UNKNOWN_LOG.due():
        log.info("webhook to an unknown source (sampled)", extra={"source": source_name[:64], "request_id": g.request_id})
    return error_response(404, "unknown_source", "no such webhook source")


def _reject(source: Source, status: int, reason: str, size: int, code: str, wreq: WebhookRequest | None = None) -> Any:
    """Answer a refused delivery of a configured source with the contract's error; keep a record
    of it (never its body) while the source's budget of rejected records allows, else count it.

    The record carries the event id and external id the body *claims* (parsed only for this,
    never applied): support sees which job an attacker or a misconfigured sender aimed at."""
    gw = gateway()
    gw.metrics.webhooks.labels(source=source.name, outcome="rejected").inc()
    message = UNVERIFIED_MESSAGE if status == 401 else reason
    if gw.limits.rejected_records.take("source:" + source.name) > 0:
        gw.metrics.rejected_unrecorded.labels(source=source.name).inc()
        return error_response(status, code, message)
    log.info("webhook rejected", extra={"source": source.name, "status": status, "reason": reason, "request_id": g.request_id})
    claimed = _claimed(source, wreq) if wreq is not None else None
    try:
        with gw.store.transaction() as w:
            w.add_delivery(
                source=source.name, status=status, outcome="rejected", reason=reason[:500], size=size,
                remote_addr=request.remote_addr, request_id=g.request_id,
                **({} if claimed is None else dict(
                    event_id=claimed.event_id[:255] or None, event_type=(claimed.type or "")[:255] or None,
                    external_id=claimed.external_id[:255] or None, job_id=w.job_for_key(source.name, claimed.external_id[:255]),
                )),
            )
    except SQLAlchemyError:
        log.warning("could not record a rejected delivery: database unavailable", extra={"request_id": g.request_id})
    return error_response(status, code, message)


def _claimed(source: Source, wreq: WebhookRequest) -> ProviderEvent | None:
    """The first event an unverified body claims to be, when it reads as one and can be stored."""
    try:
        events = source.adapter.parse(wreq)
    except Exception:  # unverified input: whatever it is, it claims nothing readable
        return None
    first = events[0] if events else None
    if first is None or not is_storable((first.event_id, first.external_id, first.type)):
        return None
    return first


class _Sampler:
    """True at most once per ``seconds`` (per process): a flood leaves one log line, not thousands."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


_UNKNOWN_LOG = _Sampler(10.0)


@bp.post("/webhooks/<source_name>")
@webhook
def receive(source_name: str) -> Any:
    gw = gateway()
    started = time.perf_counter()
    source = gw.sources.get(source_name)
    size = request.content_length or 0
    if source is None:
        return _unknown_source(source_name)
    try:
        body = _read_body(gw.config.max_body_bytes)
    except PayloadTooLarge as exc:
        return _reject(source, 413, exc.message, size, exc.code)
    received_at = utcnow()
    wreq = WebhookRequest(
        body=body,
        headers=cast(Mapping[str, str], request.headers),  # werkzeug's Headers: a case-insensitive mapping
        url=_public_url(source),
        query=request.args.to_dict(),
        content_type=request.content_type or "",
        received_at=received_at,
    )
    try:
        source.adapter.verify(wreq, source.config.secrets)
    except SignatureError as exc:
        return _reject(source, 401, exc.message, len(body), exc.code, wreq)
    except Exception as exc:  # an adapter bug must not turn bad input into a 500
        log.exception("adapter verify raised an undeclared error", extra={"source": source.name})
        return _reject(source, 401, f"signature check failed ({type(exc).__name__})", len(body), "invalid_signature", wreq)
    charge_source(gw, gw.limits, source.name)
    kept = {"body": body, "headers": stored_headers(request.headers.items(), source.config.secrets)}  # verified: kept for replay (§10)
    try:
        events = parse_verified(source, wreq)
    except GatewayError as exc:
        return _invalid(source, exc, len(body), received_at, kept)

    # read here, not in record: in a group commit another request's greenlet may run it
    remote_addr, request_id = request.remote_addr, g.request_id

    def record(w: Writer) -> list[Recorded]:
        recorded = record_events(gw, w, source, events, body=body, received_at=received_at)
        rows = [dict(
            outcome=outcome_name(r), event_id=r.event.event_id[:255], event_type=(r.event.type or "")[:255] or None,
            external_id=r.event.external_id[:255], job_id=r.outcome.job_id, decision=r.outcome.decision.value,
            state_before=r.outcome.state_before, state_after=r.outcome.state_after, version=r.version,
        ) for r in recorded] or [dict(outcome="ignored")]  # no event at all: the delivery is still recorded
        common = dict(received_at=received_at, source=source.name, status=200, size=len(body),
                      remote_addr=remote_addr, request_id=request_id, **kept)
        if forward_delivery.wanted(gw, source.name) and any_new(recorded):
            delivery_id = w.insert_delivery(**common, **rows[0])  # the message's webhook-id is dlv_<this id>
            job_id = next((r.outcome.job_id for r in recorded if r.outcome.job_id), None)
            forward_delivery.owe_delivery_message(gw, gw.outbox.enqueue, w, source=source.name, delivery_id=delivery_id, job_id=job_id)
            w.after_commit(_wake_senders)
            rows = rows[1:]
        for row in rows:
            w.add_delivery(**common, **row)
        return recorded

    try:
        # one transaction per webhook, or shared with webhooks arriving together (store/batch.py)
        recorded, changes = gw.store.group.write(record, [(source.name, pe.external_id, pe.state in _QUEUE_STATES) for pe in events])
    except DataError:  # e.g. a NUL character, which PostgreSQL text and jsonb cannot hold
        unstorable = PayloadError("the body holds a value the database cannot store (such as a NUL character)", code="unstorable_value")
        return _invalid(source, unstorable, len(body), received_at, kept)
    versions = {c.job_id: c.version for c in changes}
    for r in recorded:
        log.info(
            "webhook %s", r.outcome.decision.value,
            extra={"job_id": r.outcome.job_id, "source": source.name, "event_id": r.event.event_id, "event_type": r.event.type,
                   "state": r.outcome.state_after, "version": versions.get(r.outcome.job_id or ""), "request_id": g.request_id},
        )
    status = answer_status(recorded)
    gw.metrics.webhooks.labels(source=source.name, outcome=status).inc()
    gw.metrics.ingest_seconds.labels(source=source.name).observe(time.perf_counter() - started)
    return Response(_ACKS[status], 200, mimetype="application/json")


def _wake_senders() -> None:
    """After a commit that owed a delivery message: the endpoints' senders in this process send at once."""
    for sender in current_app.extensions.get("forward_senders", {}).values():
        sender.wake.set()


#: an event in one of these states may leave its job in a queue state (a failed job may be
#: queued again): a group commit takes that queue's lock up front (gateway/store/batch.py)
_QUEUE_STATES = (State.QUEUED, State.FAILED)

# the acknowledgement bodies, encoded once
_ACKS = {status: json.dumps({"status": status}).encode() for status in ("accepted", "duplicate", "ignored")}


def _invalid(source: Source, exc: GatewayError, size: int, received_at: Any, kept: dict[str, Any] | None) -> Any:
    """A verified body we cannot read: 400, recorded so the trace shows why, with the body and
    headers (``kept``) so that it can be replayed once the adapter reads it (CONTRACT §10)."""
    gw = gateway()
    gw.metrics.webhooks.labels(source=source.name, outcome="invalid").inc()
    log.info("webhook unparseable", extra={"source": source.name, "reason": exc.message, "request_id": g.request_id})
    with gw.store.transaction() as w:
        w.add_delivery(
            received_at=received_at, source=source.name, status=400, outcome="invalid", reason=exc.message[:500],
            event_id=(request.headers.get("webhook-id") or "")[:255] or None, size=size,
            remote_addr=request.remote_addr, request_id=g.request_id, **(kept or {}),
        )
    return error_response(400, exc.code, exc.message)
