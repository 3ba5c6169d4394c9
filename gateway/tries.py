"""One try of an owed outbound call, and what it comes to: the machinery the outbox's kinds
(callbacks, details fetches, gateway/outbox.py) and the forwarding senders (gateway/forward_send.py)
share, so both retry, lease and record the same way.

- ``claim``: lease due outbox rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's
  ``BEGIN IMMEDIATE`` serializes claimers) by pushing ``next_attempt_at`` past the call's
  worst case, so a process that dies mid-call leaves the row to another one after the lease.
- ``post_signed``: the Standard Webhooks–signed POST of exactly the bytes signed; what it answered.
- ``recording`` / ``still_ours``: the row(s) again, locked, in a new transaction, unless settled
  meanwhile or their lease ran out and another claim took them over (that claim's word wins).
- ``settle``: a try's result applied to the row: delivered, dead, or rescheduled with
  exponential backoff and equal jitter (``outbox_backoff`` doubling to ``outbox_backoff_max``),
  a ``Retry-After`` honoured up to the cap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import Select, select

from adapters.base import ProviderEvent
from gateway.config import Config
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import OutboxItem
from gateway.owed import DEAD, DELIVERED, PENDING
from gateway.store import Store, Writer

USER_AGENT = "job-webhook-gateway (outbox)"


@dataclass(frozen=True)
class Result:
    """What one try came to."""

    ok: bool = False
    status: int | None = None
    error: str | None = None
    give_up: bool = False
    retry_after: float | None = None
    events: list[ProviderEvent] = field(default_factory=list)
    duration_ms: float | None = None  # the HTTP call's wall time, for the trace


def backoff(attempts: int, base: float, cap: float, rnd: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``attempts`` failed tries: ``base·2^(attempts-1)`` capped at ``cap``,
    half of it fixed and half random (equal jitter), so retries spread out but never bunch at 0."""
    ceiling = min(float(cap), float(base) * 2.0 ** min(max(attempts - 1, 0), 40))
    return ceiling / 2 + rnd() * ceiling / 2


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def lease(config: Config) -> timedelta:
    """How long a claimed row stays out of other claimers' reach: longer than any one call."""
    return timedelta(seconds=3 * max(config.outbox_timeout, 1) + 5)


def claim(store: Store, stmt: Select[OutboxItem], hold: timedelta,
          keep: Callable[[OutboxItem], bool] = lambda row: True) -> list[OutboxItem]:
    """Lease the rows ``stmt`` selects that ``keep`` accepts: each counts one more try and is
    out of reach until ``hold`` from now. Returns detached copies, safe to read outside a session."""
    now = utcnow()
    with store.transaction() as w:
        if w.postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        rows = [row for row in w.session.scalars(stmt).all() if keep(row)]
        for row in rows:
            row.attempts += 1
            row.next_attempt_at = now + hold
    return rows


def sign(secret: str, msg_id: str, signed_at: datetime, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``) of ``msg_id``,
    the timestamp and the exact ``body`` bytes, keyed with a ``whsec_`` secret. The same as the
    standardwebhooks library's for UTF-8 bodies, and defined for any bytes a provider sent."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{int(signed_at.timestamp())}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def compact_json(payload: dict[str, Any]) -> bytes:
    """A message's body: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def post_signed(url: str, *, msg_id: str, body: bytes, secret: str, timeout: tuple[float, float],
                headers: dict[str, str] | None = None) -> Result:
    """POST exactly ``body``, signed with Standard Webhooks over those bytes (``webhook-id`` is
    ``msg_id``, the same on every try); ``headers`` go with it (default: JSON's content type).
    2xx delivers; ``410 Gone`` gives up (the receiver disabled the endpoint); anything else is
    retried, honouring ``Retry-After``."""
    signed_at = datetime.now(UTC).replace(microsecond=0)
    sent = {
        "user-agent": USER_AGENT,
        **(headers if headers is not None else {"content-type": "application/json"}),
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": sign(secret, msg_id, signed_at, body),
    }
    started = time.perf_counter()

    def took() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        response = requests.post(url, data=body, headers=sent, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return Result(error=type(exc).__name__, duration_ms=took())  # never the message: it may hold the URL
    with response:
        status = response.status_code
        if 200 <= status < 300:
            return Result(ok=True, status=status, duration_ms=took())
        if status == 410:
            return Result(status=status, give_up=True, error="410 Gone: the receiver disabled this endpoint", duration_ms=took())
        return Result(status=status, error=f"HTTP {status}", retry_after=retry_after(response.headers.get("Retry-After")),
                      duration_ms=took())


def still_ours(w: Writer, rows: Sequence[OutboxItem]) -> dict[int, OutboxItem]:
    """In ``w``'s transaction, the claimed ``rows`` as they are now, locked, by id; left out are
    those whose try must not be recorded: settled meanwhile, or whose lease ran out and another
    claim took them over (that claim's word wins)."""
    tries = {row.id: row.attempts for row in rows}
    items = w.session.scalars(select(OutboxItem).where(OutboxItem.id.in_(list(tries))).order_by(OutboxItem.id).with_for_update())
    return {item.id: item for item in items if item.status == PENDING and item.attempts == tries[item.id]}


@contextmanager
def recording(store: Store, row: OutboxItem) -> Iterator[tuple[Writer, OutboxItem] | None]:
    """A transaction holding ``row`` locked as it is now, or None when the try must not be
    recorded (see ``still_ours``)."""
    with store.transaction() as w:
        item = still_ours(w, [row]).get(row.id)
        yield None if item is None else (w, item)


def settle(item: OutboxItem, result: Result, config: Config, *, out_of_tries: bool, dead: str = "gave_up") -> dict[str, Any]:
    """Apply one try's ``result`` to ``item`` (locked, in the recording transaction): delivered,
    dead (given up, or ``out_of_tries``) or rescheduled. Returns the trace detail: ``try``,
    ``status``, ``duration_ms``, ``outcome`` ("delivered", ``dead``, "retry") and, when it
    failed, ``error`` and ``next_try_at``."""
    now = utcnow()
    detail: dict[str, Any] = {"try": item.attempts, "status": result.status}
    if result.duration_ms is not None:
        detail["duration_ms"] = result.duration_ms
    if result.ok:
        item.status, item.delivered_at, item.last_error = DELIVERED, now, None
        detail["outcome"] = "delivered"
    elif result.give_up or out_of_tries:
        item.status, item.last_error = DEAD, result.error
        detail.update(outcome=dead, error=result.error)
    else:
        delay = backoff(item.attempts, config.outbox_backoff, config.outbox_backoff_max)
        if result.retry_after is not None:
            delay = min(max(delay, result.retry_after), float(config.outbox_backoff_max))
        item.next_attempt_at = now + timedelta(seconds=delay)
        item.last_error = result.error
        detail.update(outcome="retry", error=result.error, next_try_at=iso(item.next_attempt_at))
    return detail
