"""Rows and the pure fold (gateway.states): a job row's columns for a view, the view a row
holds, the fold's events from stored ones and from a provider's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.base import ProviderEvent
from gateway import states
from gateway.models import Event
from gateway.states import Kind, State


def fold_event(source: str, pe: ProviderEvent, kind: Kind) -> states.Event:
    """A provider's (or the gateway's) event as the fold sees it."""
    return states.Event(
        uid=f"{source}:{pe.event_id}",
        occurred_at=pe.occurred_at,
        state=pe.state,
        kind=kind,
        key=(source, pe.external_id) if kind in states.KEYED else None,
        progress=pe.progress,
        queue=pe.queue,
        error=pe.error,
        result=pe.result,
        label=pe.label,
    )


def progress_only(before: tuple[Any, ...] | None, after: tuple[Any, ...]) -> bool:
    """Only the progress moved: the relay may coalesce it (relay/coalesce.py)."""
    return before is not None and len(before) > 0 and before[:3] == after[:3] and before[4:] == after[4:]


def public(job: Any) -> tuple[Any, ...]:
    """What watchers see of a job (its JSON's moving parts): a change here is a new version."""
    queue_pos = (job.queue or {}).get("position") if job.state == State.QUEUED.value else None
    return (job.state, job.attempt, job.label, job.progress, job.error, job.result, queue_pos)


def unversioned(job: Any) -> tuple[Any, ...]:
    """What else the job's JSON shows that moves without a new version (CONTRACT §1): the rest of
    the queue object (``total``), ``updated_at``, ``state_changed_at``."""
    return (job.queue if job.state == State.QUEUED.value else None, job.updated_at, job.state_changed_at)


def queue_name_of(queue: dict[str, Any] | None) -> str | None:
    """The queue an event's ``queue`` object names, if any."""
    return str(queue["name"]) if queue and queue.get("name") else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def fold_of(view: states.JobView) -> dict[str, Any]:
    """The fold's bookkeeping as JSON for the job row."""
    return {
        "queue": view.queue,
        "failed_at": view.failed_at.isoformat() if view.failed_at else None,
        "attempt_key": list(view.attempt_key) if view.attempt_key else None,
        "attempt_fresh": view.attempt_fresh,
        "queued_by_event": view.queued_by_event,
        "stalled": view.stalled,
        "last": [view.last[0].isoformat(), view.last[1], view.last[2]] if view.last else None,
    }


def keys_of(links: list[states.Link]) -> list[list[Any]]:
    """The job's keys for its fold JSON: [uid, source, external id, linked at or None]."""
    return [[link.uid, link.key[0], link.key[1], link.at.isoformat() if link.at else None] for link in links]


def links_of(keys: list[list[Any]]) -> list[states.Link]:
    """``keys_of`` read back."""
    return [states.Link(key=(k[1], k[2]), at=_dt(k[3]), uid=k[0]) for k in keys]


def job_columns(job: Any, view: states.JobView, links: list[states.Link]) -> dict[str, Any]:
    """The job row's columns for a new view. The queue shown keeps what it showed while the
    job stays queued (a position the gateway computed), takes what the provider reports, and
    is null once the job has left the queue."""
    columns = dict(
        state=view.state.value,
        attempt=view.attempt,
        label=view.label,
        progress=view.progress,
        error=view.error,
        result=view.result,
        state_changed_at=view.state_changed_at,
        updated_at=view.updated_at,
        queued_since=view.queued_since,
        fold={**fold_of(view), "keys": keys_of(links)},
        queue=None,
    )
    if view.state is State.QUEUED:
        reported = view.queue or {}
        shown = dict(job.queue or {}) if job.state == State.QUEUED.value else {}
        shown["name"] = reported.get("name") or job.queue_name
        for k in ("position", "total"):
            if reported.get(k) is not None:
                shown[k] = reported[k]
            else:
                shown.setdefault(k, None)
        columns["queue"] = shown
    return columns


def view_of(job: Any) -> states.JobView:
    """The fold state stored in a job row (an ORM row or the fast path's)."""
    f = job.fold or {}
    last = f.get("last")
    key = f.get("attempt_key")
    return states.JobView(
        state=State(job.state),
        attempt=job.attempt,
        label=job.label,
        state_changed_at=job.state_changed_at,
        updated_at=job.updated_at,
        queued_since=job.queued_since,
        progress=job.progress,
        queue=f.get("queue"),
        error=job.error,
        result=job.result,
        failed_at=_dt(f.get("failed_at")),
        attempt_key=(key[0], key[1]) if key else None,
        attempt_fresh=f.get("attempt_fresh", True),
        queued_by_event=f.get("queued_by_event", False),
        stalled=f.get("stalled", False),
        last=(datetime.fromisoformat(last[0]), last[1], last[2]) if last else None,
    )


def event_of(row: Event | Any) -> states.Event:
    """A stored event (an ORM object, or a row of its source, event id, external id, kind,
    state, occurred_at and data) as the fold sees it."""
    data = row.data or {}
    kind = Kind(row.kind)
    key: states.Key | None = None
    if kind in states.KEYED and row.external_id is not None:
        key = (row.source, row.external_id)
    elif kind is Kind.LINK and data.get("key"):
        key = (data["key"][0], data["key"][1])
    return states.Event(
        uid=f"{row.source}:{row.event_id}",
        occurred_at=row.occurred_at,
        state=State(row.state) if row.state else None,
        kind=kind,
        key=key,
        progress=data.get("progress"),
        queue=data.get("queue"),
        error=data.get("error"),
        result=data.get("result"),
        label=data.get("label"),
    )
