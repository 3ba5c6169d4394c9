"""Forwarded messages as an operator sees them (CONTRACT §9): each endpoint's health, the
messages owed or dead, ``resend``, and an endpoint's enabled state (``410 Gone`` disables it,
an operator enables it again: one ``endpoint_states`` row every process reads). Plain functions
over the store, called alike by the API, the CLI, the senders and the support console."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.endpoints import EndpointConfig
from gateway.errors import NotFound
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import EndpointState, OutboxItem
from gateway.owed import DEAD, DELIVERED, FORWARD, PENDING
from gateway.store import Store, Writer


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
        disabled = set(session.scalars(select(EndpointState.name).where(EndpointState.enabled.is_(False))))
    return [
        {"name": name, "url": endpoint.public_url, "enabled": name not in disabled,
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


def endpoint_enabled(store: Store, name: str) -> bool:
    """Whether the endpoint may be sent to: no ``410 Gone`` since an operator last enabled it."""
    with store.reading() as session:
        return session.scalar(select(EndpointState.enabled).where(EndpointState.name == name)) is not False


def disable_endpoint(w: Writer, name: str, reason: str) -> None:
    """In ``w``'s transaction: the endpoint answered ``410 Gone``; every process's sender stops
    until an operator enables it (its messages stay pending)."""
    _set_state(w, name, enabled=False, reason=reason, by=None)


def enable_endpoint(store: Store, endpoints: Mapping[str, EndpointConfig], name: str, *, by: str) -> dict[str, Any]:
    """An operator enables the endpoint again: its pending messages are due now and flow in
    order. NotFound for a name that is not configured. Returns the endpoint's status."""
    if name not in endpoints:
        raise NotFound(f"no endpoint {name[:64]!r}", code="endpoint_not_found")
    with store.transaction() as w:
        _set_state(w, name, enabled=True, reason=None, by=by)
        w.session.execute(update(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.target == name, OutboxItem.status == PENDING)
                          .values(next_attempt_at=utcnow()))
    return next(e for e in endpoint_status(store, {name: endpoints[name]}))


def _set_state(w: Writer, name: str, *, enabled: bool, reason: str | None, by: str | None) -> None:
    now = utcnow()
    values = {"enabled": enabled, "reason": reason, "changed_by": by, "changed_at": now}
    dialect = postgresql if w.postgres else sqlite
    w.session.execute(dialect.insert(EndpointState).values(name=name, **values)
                      .on_conflict_do_update(index_elements=["name"], set_=values))


def sample_oldest_pending(store: Store, endpoints: Mapping[str, EndpointConfig], gauge: Gauge) -> None:
    """Set ``gauge{endpoint}`` to the age in seconds of each endpoint's oldest pending message
    (0 when none): the number an operator alerts on."""
    with store.reading() as session:
        oldest = dict(session.execute(
            select(OutboxItem.target, func.min(OutboxItem.created_at))
            .where(OutboxItem.kind == FORWARD, OutboxItem.status == PENDING).group_by(OutboxItem.target)
        ).all())
    now = utcnow()
    for name in endpoints:
        at = oldest.get(name)
        gauge.labels(endpoint=name).set(max(0.0, (now - at).total_seconds()) if at else 0.0)
