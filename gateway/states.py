"""The job state machine: pure code, no I/O.

A job's state is a fold over its recorded events, sorted by (occurred_at, state rank, event id).
The rules, in the order ``apply`` checks them:

1. An event of an earlier attempt's (source, external_id), newer than the link that replaced
   that id, is ``superseded``: kept in the trace, never applied.
2. ``complete`` is terminal: anything after it is ``stale``.
3. From ``failed``, an event strictly newer than the failure opens the next attempt
   (``attempt`` + 1) and is applied in it; an older or simultaneous one is ``stale``.
4. Inside one attempt a state never moves back: a lower rank than the current one is ``stale``.
   The same state is applied (it may carry newer progress, queue position or label).
5. A link to the next attempt's (source, external_id) opens that attempt in ``queued``, unless
   the current attempt is fresh or already driven by that id, in which case it only binds it.
6. A watchdog failure ("stalled": no news for the source's ``stall_after``) is a presumption,
   not the provider's word. It applies only to a job still ``queued`` or ``processing``
   (otherwise it is ``stale``), and a newer event of the attempt's own provider or worker
   *resumes* that attempt instead of opening the next one (a status read from the provider's
   API, kind ``reconcile``, counts as the provider's word). A retry or a link still opens
   the next attempt, as after any failure.

Because the fold is a pure function of the event *set* (duplicates are dropped by event id
before it runs), any arrival order and any duplication end in the same job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class State(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"


RANK: Mapping[State, int] = {State.QUEUED: 0, State.PROCESSING: 1, State.COMPLETE: 2, State.FAILED: 2}


class Kind(StrEnum):
    PROVIDER = "provider"  # a verified webhook from a source's adapter
    WORKER = "worker"  # POST /api/jobs/<id>/events from the integrator's own worker
    RETRY = "retry"  # POST /api/jobs/<id>/retry
    LINK = "link"  # POST /api/jobs/<id>/attempts: the next attempt's (source, external_id)
    WATCHDOG = "watchdog"  # stall_after elapsed with no news
    RECONCILE = "reconcile"  # read from the provider's API (gateway/reconcile.py), keyed like a webhook


#: kinds whose events speak for a (source, external_id): superseded by a later link, and able to
#: resume an attempt the watchdog only presumed dead (rule 6)
KEYED = (Kind.PROVIDER, Kind.RECONCILE)


class Decision(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    SUPERSEDED = "superseded"
    IGNORED = "ignored"  # verified, but maps to no job state
    DUPLICATE = "duplicate"  # decided by the store on the dedup key, never by the fold
    HELD = "held"  # no job registered for its (source, external_id) yet


Key = tuple[str, str]  # (source, external_id)


@dataclass(frozen=True)
class Event:
    """A recorded event as the fold sees it. ``uid`` is unique across all events of a job."""

    uid: str
    occurred_at: datetime
    state: State | None
    kind: Kind = Kind.PROVIDER
    key: Key | None = None  # None for events that name the job directly (worker, retry, watchdog)
    progress: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    label: str | None = None

    def sort_key(self) -> tuple[datetime, int, str]:
        rank = RANK[self.state] if self.state is not None else 0
        return (self.occurred_at, rank, self.uid)


@dataclass(frozen=True)
class Link:
    """(source, external_id) bound to the job from ``at`` on; ``at`` None: since registration."""

    key: Key
    at: datetime | None
    uid: str = ""


@dataclass(frozen=True)
class JobView:
    """The folded job: everything the job JSON shows except identity, version and queue maths."""

    state: State
    attempt: int
    label: str | None
    state_changed_at: datetime
    updated_at: datetime
    queued_since: datetime  # when the current stay in `queued` began: the queue order
    progress: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None  # what the provider or worker reported, if anything
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    # bookkeeping for the rules above, not shown in the job JSON
    failed_at: datetime | None = None
    attempt_key: Key | None = None
    attempt_fresh: bool = True
    queued_by_event: bool = False
    stalled: bool = False  # the current failure is the watchdog's presumption (rule 6)
    last: tuple[datetime, int, str] | None = None  # sort key of the last event folded in

    def public(self) -> tuple[Any, ...]:
        """The fields whose change raises the job's version (queue position is added by the store)."""
        return (self.state, self.attempt, self.label, self.progress, self.error, self.result)


def initial(created_at: datetime, label: str | None = None) -> JobView:
    """A registered job with no events yet: the work was handed off and waits in `queued`."""
    return JobView(
        state=State.QUEUED,
        attempt=1,
        label=label,
        state_changed_at=created_at,
        updated_at=created_at,
        queued_since=created_at,
    )


DEFAULT_ERROR = {"code": "failed", "message": "The job failed.", "retryable": True}


def normalize_error(error: Mapping[str, Any] | None) -> dict[str, Any]:
    """An error dict with every key present; ``retryable`` is true unless the provider says otherwise."""
    error = dict(error or {})
    return {
        "code": str(error.get("code") or DEFAULT_ERROR["code"]),
        "message": str(error.get("message") or DEFAULT_ERROR["message"]),
        "retryable": error.get("retryable") is not False,
    }


def is_superseded(event: Event, links: Iterable[Link]) -> bool:
    """True when a later link replaced the event's (source, external_id) before it occurred."""
    if event.key is None:
        return False
    t = event.occurred_at
    in_force = [link for link in links if link.at is None or link.at <= t]
    if not in_force:
        return False
    latest = max(in_force, key=lambda link: (link.at is not None, link.at or t, link.uid))
    own_linked = any(link.key == event.key for link in in_force)
    return latest.key != event.key and own_linked


def apply(view: JobView, event: Event, links: Iterable[Link] = ()) -> tuple[JobView, Decision]:
    """Fold one event into the job; the caller feeds events in ``Event.sort_key`` order."""
    view = replace(view, last=event.sort_key())
    if event.kind is Kind.LINK:
        return _apply_link(view, event)
    if is_superseded(event, links):
        return view, Decision.SUPERSEDED
    if event.state is None:
        return view, Decision.IGNORED
    if view.state is State.COMPLETE:
        return view, Decision.STALE
    if event.kind is Kind.WATCHDOG and view.state is not State.QUEUED and view.state is not State.PROCESSING:
        return view, Decision.STALE
    if view.state is State.FAILED:
        if view.failed_at is not None and event.occurred_at <= view.failed_at:
            return view, Decision.STALE
        if view.stalled and event.kind in (*KEYED, Kind.WORKER):
            return _enter(view, event), Decision.APPLIED  # the attempt was only presumed dead: it resumes
        view = _next_attempt(view, event.occurred_at, key=event.key if event.kind is not Kind.RETRY else None)
        return _enter(view, event), Decision.APPLIED
    if RANK[event.state] < RANK[view.state]:
        return view, Decision.STALE
    return _enter(view, event), Decision.APPLIED


def fold(
    created_at: datetime,
    events: Iterable[Event],
    links: Iterable[Link] = (),
    label: str | None = None,
) -> tuple[JobView, dict[str, Decision]]:
    """The job that a set of events describes, and each event's decision. Duplicates by uid count once."""
    links = list(links)
    unique = {e.uid: e for e in events}
    view = initial(created_at, label)
    decisions: dict[str, Decision] = {}
    for event in sorted(unique.values(), key=Event.sort_key):
        view, decisions[event.uid] = apply(view, event, links)
    return view, decisions


def retry_time(view: JobView, now: datetime) -> datetime:
    """When a retry through the API takes effect: max(now, failure + 1 ms), so it is newer than the failure."""
    floor = (view.failed_at or now) + timedelta(milliseconds=1)
    return max(now, floor)


# -- internals ------------------------------------------------------------------------------


def _next_attempt(view: JobView, at: datetime, key: Key | None) -> JobView:
    return replace(
        view,
        attempt=view.attempt + 1,
        attempt_key=key,
        attempt_fresh=True,
        state=State.QUEUED,
        state_changed_at=at,
        queued_since=at,
        queued_by_event=False,
        progress=None,
        queue=None,
        error=None,
        result=None,
        failed_at=None,
        stalled=False,
    )


def _apply_link(view: JobView, event: Event) -> tuple[JobView, Decision]:
    if view.attempt_key in (None, event.key) or (view.attempt_fresh and view.state is State.QUEUED):
        return replace(view, attempt_key=event.key), Decision.APPLIED
    if view.state is State.COMPLETE:
        return view, Decision.STALE
    view = _next_attempt(view, event.occurred_at, key=event.key)
    return replace(view, updated_at=max(view.updated_at, event.occurred_at), label=event.label or view.label), Decision.APPLIED


def _enter(view: JobView, event: Event) -> JobView:
    """Apply an event whose state is at or above the current one within the attempt."""
    new = event.state
    assert new is not None
    changed = new is not view.state
    at = event.occurred_at
    progress = None
    if new is State.PROCESSING:
        progress = dict(event.progress) if event.progress is not None else (None if changed else view.progress)
    queue = None
    queued_since, queued_by_event = view.queued_since, view.queued_by_event
    if new is State.QUEUED:
        queue = {**(view.queue or {}), **(event.queue or {})} if (event.queue or view.queue) else None
        if event.kind is not Kind.RETRY and not queued_by_event:
            queued_since, queued_by_event = at, True
    return replace(
        view,
        state=new,
        state_changed_at=at if changed else view.state_changed_at,
        updated_at=max(view.updated_at, at),
        label=event.label or view.label,
        progress=progress,
        queue=queue,
        queued_since=queued_since,
        queued_by_event=queued_by_event,
        error=normalize_error(event.error) if new is State.FAILED else None,
        result=(dict(event.result) if event.result is not None else None) if new is State.COMPLETE else None,
        failed_at=at if new is State.FAILED else None,
        stalled=new is State.FAILED and event.kind is Kind.WATCHDOG,
        attempt_key=view.attempt_key or event.key,
        attempt_fresh=False,
    )
