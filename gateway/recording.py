"""A verified delivery's body turned into recorded events: the part the webhook route
(gateway/ingest.py) and replay (gateway/replay.py, CONTRACT §10) share, so a stored body is parsed,
deduplicated and folded exactly as it was when it arrived.

- ``parse_verified``: the source's adapter, as configured now, reads the body; anything it
  cannot read, or any value the database cannot store, is a ``PayloadError`` (400).
- ``record_events``: each event through the one writer path (``Writer.record_event``), deduplicated
  on (source, event id) and, for adapters whose event id is unsigned, on a digest of the body.
- ``answer_status``: what the provider (or whoever replays) is told: accepted, duplicate or ignored.
- ``stored_headers``: the request headers a verified delivery keeps (no credentials, no hop-by-hop).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from adapters.base import ProviderEvent, WebhookRequest
from gateway.errors import GatewayError, PayloadError
from gateway.services import Source
from gateway.states import Decision
from gateway.storable import MESSAGE as STORABLE_MESSAGE
from gateway.storable import is_storable
from gateway.store import Outcome, Writer

if TYPE_CHECKING:
    from gateway.context import Gateway

log = logging.getLogger("gateway.ingest")

#: headers that belong to one connection (RFC 9110 §7.6.1), never stored nor forwarded
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "expect", "proxy-authenticate"})
#: credentials a provider's request may carry to the gateway: never stored
CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie"})


def stored_headers(headers: Iterable[tuple[str, str]], secrets: Sequence[str] = ()) -> dict[str, str]:
    """The request headers a verified delivery keeps for replay and forwarding: every header but
    credentials (``Authorization``, ``Cookie``), hop-by-hop ones (also those ``Connection`` names)
    and any that carries one of the source's ``secrets`` — a provider that sends a fixed token
    instead of signing (``Adapter.signs_body = False``) must not have it stored or passed on.
    The provider's signature headers are kept: replay parses with them and forwarding passes them on."""
    pairs = list(headers)
    named = {n.strip().lower() for k, v in pairs if k.lower() == "connection" for n in v.split(",")}
    return {k: v for k, v in pairs
            if (low := k.lower()) not in HOP_BY_HOP and low not in CREDENTIALS and low not in named and not _carries(v, secrets)}


def _carries(value: str, secrets: Sequence[str]) -> bool:
    """Whether a header value holds a secret, as given or base64-encoded after a scheme (Basic)."""
    decoded = ""
    try:
        decoded = base64.b64decode(value.split()[-1], validate=True).decode("utf-8", "replace") if value.split() else ""
    except (binascii.Error, ValueError):
        pass
    return any(secret and (secret in value or secret in decoded) for secret in secrets)


def parse_verified(source: Source, wreq: WebhookRequest) -> list[ProviderEvent]:
    """The events of a verified body as the source's adapter reads it now. A body it cannot read,
    or one holding values the database cannot store, raises the adapter's ``GatewayError`` or a
    ``PayloadError`` (400); an adapter bug is logged and answered the same way, never a 500."""
    try:
        events = source.adapter.parse(wreq)
    except GatewayError:
        raise
    except Exception as exc:
        log.exception("adapter parse raised an undeclared error", extra={"source": source.name})
        raise PayloadError(f"unreadable body ({type(exc).__name__})") from None
    if not all(is_storable(pe) for pe in events):
        raise PayloadError(STORABLE_MESSAGE, code="unstorable_value")
    return events


@dataclass(frozen=True)
class Recorded:
    """One event of a body, what the writer decided, and its job's version right after it."""

    event: ProviderEvent
    outcome: Outcome
    version: int | None


def record_events(gw: Gateway, w: Writer, source: Source, events: Sequence[ProviderEvent], *, body: bytes,
                  received_at: datetime) -> list[Recorded]:
    """Record and fold each event in ``w``'s transaction (the one writer path); a thin event not
    seen before owes a details fetch (gateway/outbox.py). A second run over the same body makes
    every event a duplicate: that is what replay relies on."""
    digest = None if source.adapter.event_id_signed else hashlib.sha256(body).hexdigest()
    recorded = []
    for i, pe in enumerate(events):
        outcome = w.record_event(source.name, pe, auto_register=source.config.auto_register, received_at=received_at,
                                 digest=digest and event_digest(digest, i))
        w.finish_changes()
        if pe.needs_details and outcome.decision is not Decision.DUPLICATE:
            gw.outbox.enqueue_details(w, source.name, pe, outcome.job_id)
        recorded.append(Recorded(pe, outcome, w.version_of(outcome.job_id)))
    return recorded


def event_digest(body_digest: str, index: int) -> str:
    """The dedup digest of the ``index``-th event of a signed body (64 characters, as stored)."""
    return body_digest if index == 0 else hashlib.sha256(f"{body_digest}:{index}".encode()).hexdigest()


def ignored(r: Recorded) -> bool:
    """An event that maps to no job state (and waits for no details fetch that could give it one)."""
    return r.event.state is None and not r.event.needs_details


def outcome_name(r: Recorded) -> str:
    """A delivery row's outcome for one of its events: duplicate, ignored or accepted."""
    if r.outcome.decision is Decision.DUPLICATE:
        return "duplicate"
    return "ignored" if ignored(r) else "accepted"


def answer_status(recorded: Sequence[Recorded]) -> str:
    """The acknowledgement for a whole body: ``ignored`` when it held no event or only stateless
    and duplicate ones, ``duplicate`` when every event was, else ``accepted``."""
    if not recorded:
        return "ignored"
    if all(r.outcome.decision is Decision.DUPLICATE for r in recorded):
        return "duplicate"
    if all(ignored(r) or r.outcome.decision is Decision.DUPLICATE for r in recorded):
        return "ignored"
    return "accepted"


def any_new(recorded: Sequence[Recorded]) -> bool:
    """Whether a body brought a new event, or none at all: what owes a ``delivery.<source>`` message (§9)."""
    return not recorded or any(r.outcome.decision is not Decision.DUPLICATE for r in recorded)
