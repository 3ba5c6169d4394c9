"""Forwarded messages as an operator sees them (CONTRACT §9): each endpoint's health, the
messages owed or dead, and ``resend``. Plain functions over the store, called alike by the API,
the CLI and the support console."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from gateway.endpoints import EndpointConfig
from gateway.errors import NotFound
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import OutboxItem
from gateway.owed import DEAD, DELIVERED, FORWARD, PENDING
from gateway.store import Store


def endpoint_status(store: Store, endpoints: Mapping[str, EndpointConfig]) -> list[dict[str, Any]]:
    """``{"name", "url" (credentials removed), "enabled", "pending", "dead", "last_success_at",
    "last_failure_at"}`` for every configured endpoint, in name order."""
    counts: dict[tuple[str | None, str], int] = {}  # target is nullable in the outbox table
    last_ok: dict[str | None, Any] = {}
    with store.reading() as session:
        for target, status, n in session.execute(
            select(OutboxItem.target, OutboxItem.status, func.count())
            .where(OutboxItem.kind == FORWARD, OutboxItem.status.in_([PENDING, DEAD])).group_by(OutboxItem.target, OutboxItem.status)
        ):
            counts[(target, status)] = n
        for target, at in session.execute(
            select(OutboxItem.target, func.max(OutboxItem.delivered_at))
            .where(OutboxItem.kind == FORWARD, OutboxItem.status == DELIVERED).group_by(OutboxItem.target)
        ):
            last_ok[target] = at
        failures = dict(session.execute(
            select(OutboxItem.target, func.max(OutboxItem.next_attempt_at))
            .where(OutboxItem.kind == FORWARD, OutboxItem.last_error.is_not(None)).group_by(OutboxItem.target)
        ).all())
    return [
        {"name": name, "url": endpoint.public_url, "enabled": True,
         "pending": counts.get((name, PENDING), 0), "dead": counts.get((name, DEAD), 0),
         "last_success_at": iso(last_ok[name]) if last_ok.get(name) else None,
         "last_failure_at": iso(failures[name]) if failures.get(name) else None}
        for name, endpoint in sorted(endpoints.items())
    ]


def list_messages(store: Store, *, endpoint: str | None = None, dead_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Forwarded messages not delivered yet (or only the dead ones), oldest first."""
    stmt = select(OutboxItem).where(OutboxItem.kind == FORWARD,
                                    OutboxItem.status.in_([DEAD] if dead_only else [PENDING, DEAD]))
    if endpoint:
        stmt = stmt.where(OutboxItem.target == endpoint)
    with store.reading() as session:
        rows = session.scalars(stmt.order_by(OutboxItem.id).limit(limit)).all()
    return [message_json(row) for row in rows]


def message_json(row: OutboxItem) -> dict[str, Any]:
    """One message as the API and the CLI show it."""
    return {"id": row.id, "endpoint": row.target, "job_id": row.job_id, "type": row.payload.get("type"),
            "webhook_id": row.payload.get("webhook_id"), "status": row.status, "tries": row.attempts,
            "next_try_at": iso(row.next_attempt_at) if row.status == PENDING else None, "last_error": row.last_error}


def resend(store: Store, message_id: int, *, by: str) -> dict[str, Any]:
    """Send a forwarded message again (dead or delivered), due now with a fresh retry window;
    the job's trace says who asked. NotFound for an id that is no forwarded message."""
    with store.transaction() as w:
        item = w.session.scalars(select(OutboxItem).where(OutboxItem.id == message_id, OutboxItem.kind == FORWARD)
                                 .with_for_update()).first()
        if item is None:
            raise NotFound(f"no message {message_id}", code="message_not_found")
        now = utcnow()
        item.status, item.attempts, item.next_attempt_at, item.created_at = PENDING, 0, now, now
        if item.job_id:
            w.trace(item.job_id, "forward_resend", {"by": by, "message": item.id, "endpoint": item.target,
                                                    "webhook_id": item.payload.get("webhook_id")})
    return message_json(item)
