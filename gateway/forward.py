"""Forwarding (CONTRACT §9): every job change owes each matching endpoint a signed message,
written to the outbox (kind ``forward``) in the same transaction as the change, so none is lost
when a worker dies and none is sent for a change that rolled back.

A job's new version owes ``job.<state>`` when its state differs from the previous version's,
``job.progress`` otherwise; the ``webhook-id`` is ``msg_<job id>_v<version>``, the same on every
try. The outbox row's key adds the endpoint's name (one row per message and endpoint), its
``target`` is the endpoint's name (never its URL, which may carry credentials).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.ids import utcnow
from gateway.jobjson import iso, job_json
from gateway.services import Services
from gateway.store import Change, Writer

Enqueue = Callable[..., bool]  # Outbox.enqueue: a row in the writer's transaction, once per key

FORWARD = "forward"


def webhook_id(job_id: str, version: int) -> str:
    """The ``webhook-id`` of a job's version: the same on every try and every endpoint."""
    return f"msg_{job_id}_v{version}"


def message_type(state: str, state_changed: bool) -> str:
    """``job.<state>`` for a version whose state changed, else ``job.progress``."""
    return f"job.{state}" if state_changed else "job.progress"


def owe_job_messages(gw: Services, enqueue: Enqueue, w: Writer, changes: Sequence[Change]) -> None:
    """In ``w``'s transaction, as its changes are collected (the job as the version shows it,
    even when a later event of the transaction changes it again): one outbox row per changed
    job version and endpoint that wants it (events patterns, sources)."""
    now = utcnow()
    for change in changes:
        job = w._known(change.job_id)
        if job is None:
            continue
        kind = message_type(job.state, change.state_changed)
        wanting = [e for e in gw.config.endpoints.values() if e.wants(kind, job.source)]
        if not wanting:
            continue
        msg_id = webhook_id(job.id, change.version)
        payload = {"type": kind, "timestamp": iso(now), "data": job_json(job), "version": change.version,
                   "webhook_id": msg_id}
        for endpoint in wanting:
            enqueue(w, kind=FORWARD, key=f"fwd:{endpoint.name}:{msg_id}", source=job.source, job_id=job.id,
                           payload=payload, target=endpoint.name)


def install(gw: Services, enqueue: Enqueue) -> None:
    """Make every transaction of ``gw.store`` owe forwarded messages, when endpoints are configured."""
    if gw.config.endpoints:
        gw.store.owing.append(lambda w, changes: owe_job_messages(gw, enqueue, w, changes))
