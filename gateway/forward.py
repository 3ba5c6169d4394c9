"""Forwarding (CONTRACT §9): every job change owes each matching endpoint a signed message,
written to the outbox (kind ``forward``) in the same transaction as the change, so none is lost
when a worker dies and none is sent for a change that rolled back.

A job's new version owes ``job.<state>`` when its state differs from the previous version's,
``job.progress`` otherwise; the ``webhook-id`` is ``msg_<job id>_v<version>``, the same on every
try. The outbox row's key adds the endpoint's name (one row per message and endpoint), its
``target`` is the endpoint's name (never its URL, which may carry credentials).
``delivery.<source>`` messages (the provider's own request, passed on) are owed by
gateway/forward_delivery.py into the same outbox; ``request_of`` gives the sender either kind's
bytes and headers, and ``tries.post_signed`` signs whatever bytes are sent.

Progress coalesces: a ``job.progress`` row of the version just before, not tried yet, is marked
``coalesced`` by the newer ``job.progress`` in the same transaction that owes it, so a storming
job leaves one message to send, not a backlog. A state message never replaces anything, so the
last progress before a state change is always sent. With the sender's per-job pace
(gateway/forward_send.py) this bounds a job's progress messages to one per ``progress_interval_ms``
per endpoint and process, like the relay's announcements (gateway/relay/coalesce.py);
``progress_interval_ms = 0`` sends every one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import update

from gateway.forward_delivery import delivery_request, is_delivery_message
from gateway.ids import utcnow
from gateway.jobjson import iso, job_json
from gateway.models import OutboxItem
from gateway.owed import COALESCED, FORWARD, PENDING
from gateway.services import Services
from gateway.store import Change, Store, Writer
from gateway.tries import compact_json

Enqueue = Callable[..., bool]  # Outbox.enqueue: a row in the writer's transaction, once per key

PROGRESS = "job.progress"


def webhook_id(job_id: str, version: int) -> str:
    """The ``webhook-id`` of a job's version: the same on every try and every endpoint."""
    return f"msg_{job_id}_v{version}"


def message_type(state: str, state_changed: bool) -> str:
    """``job.<state>`` for a version whose state changed, else ``job.progress``."""
    return f"job.{state}" if state_changed else PROGRESS


def row_key(endpoint: str, msg_id: str) -> str:
    """The outbox key of one message to one endpoint."""
    return f"fwd:{endpoint}:{msg_id}"


def owe_job_messages(gw: Services, enqueue: Enqueue, w: Writer, changes: Sequence[Change]) -> None:
    """In ``w``'s transaction, as its changes are collected (the job as the version shows it,
    even when a later event of the transaction changes it again): one outbox row per changed
    job version and endpoint that wants it (events patterns, sources)."""
    now = utcnow()
    owed: list[tuple[str, dict[str, Any]]] = []  # (endpoint, payload) with the job as this version shows it
    for change in changes:
        job = w._known(change.job_id)
        if job is None:
            continue
        kind = message_type(job.state, change.state_changed)
        wanting = [e for e in gw.config.endpoints.values() if e.wants(kind, job.source)]
        msg_id = webhook_id(job.id, change.version)
        payload = {"type": kind, "timestamp": iso(now), "data": job_json(job), "version": change.version,
                   "webhook_id": msg_id}
        owed += [(endpoint.name, payload) for endpoint in wanting]
    if owed:  # written at the close: after the delivery that caused them (gateway/forward_delivery.py)
        w.at_close(lambda: _write_owed(gw, enqueue, w, owed))


def _write_owed(gw: Services, enqueue: Enqueue, w: Writer, owed: list[tuple[str, dict[str, Any]]]) -> None:
    """The outbox rows of ``owe_job_messages``; a ``job.progress`` row of the version just
    before, not tried yet, is coalesced away by the newer one."""
    replaced: list[str] = []  # keys of the previous version's job.progress rows a newer one replaces
    coalesce = gw.config.progress_interval_ms > 0
    for endpoint, payload in owed:
        job = payload["data"]
        enqueue(w, kind=FORWARD, key=row_key(endpoint, payload["webhook_id"]), source=job["source"], job_id=job["id"],
                payload=payload, target=endpoint)
        if coalesce and payload["type"] == PROGRESS and payload["version"] > 1:
            replaced.append(row_key(endpoint, webhook_id(job["id"], payload["version"] - 1)))
    if replaced:
        w.session.execute(
            update(OutboxItem)
            .where(OutboxItem.key.in_(replaced), OutboxItem.status == PENDING, OutboxItem.attempts == 0,
                   OutboxItem.payload["type"].as_string() == PROGRESS)
            .values(status=COALESCED)
            .execution_options(synchronize_session=False)
        )


def request_of(store: Store, row: OutboxItem) -> tuple[bytes, dict[str, str]]:
    """The exact bytes a forwarded message sends and its headers besides the gateway's signature:
    a ``job.*`` message's JSON, or a delivery's own body and headers (gateway/forward_delivery.py,
    NotFound once that body was pruned)."""
    payload = row.payload
    if is_delivery_message(payload):
        return delivery_request(store, int(payload["delivery_id"]), row.job_id)
    return compact_json({k: payload[k] for k in ("type", "timestamp", "data")}), {"content-type": "application/json"}


def install(gw: Services, enqueue: Enqueue) -> None:
    """Make every transaction of ``gw.store`` owe forwarded messages, when endpoints are configured."""
    if gw.config.endpoints:
        gw.store.owing.append(lambda w, changes: owe_job_messages(gw, enqueue, w, changes))
