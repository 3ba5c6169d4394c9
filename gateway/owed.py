"""Outbox rows owed in a writer's transaction: the one way anything (forwarding, callbacks,
details fetches, status reads, the CLI) owes an outbound call, so none is lost with a crash and
none is sent for a change that rolled back. The dispatcher (outbox.py) sends them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.ids import utcnow
from gateway.models import OutboxItem
from gateway.store import Writer

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
COALESCED = "coalesced"  # a forwarded job.progress a newer one replaced before it was sent
FORWARD = "forward"  # the kind of a forwarded message's row (gateway/forward.py, forward_delivery.py)


def enqueue_row(w: Writer, *, kind: str, key: str, source: str, job_id: str | None, payload: dict[str, Any],
                target: str | None = None, due: datetime | None = None) -> bool:
    """Add an outbox row in ``w``'s transaction unless its key is taken; due ``due`` (default now).
    ``Outbox.enqueue`` also wakes this process's dispatcher; the CLI and the watchdog use this."""
    now = utcnow()
    row = dict(key=key, kind=kind, job_id=job_id, source=source, target=target, payload=payload, status=PENDING,
               attempts=0, next_attempt_at=due or now, created_at=now)
    return bool(w._insert_ignore(OutboxItem, row, conflict=("key",)))
