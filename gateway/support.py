"""Queries for people on support and operations: find a job from whatever a ticket contains,
list deliveries (above all the rejected ones), and prune old history.

Pruning rule (``prune``), for rows older than the retention (``retention_days``):

* deliveries (accepted and rejected) and trace entries are deleted, except each job's
  ``registered`` entry (one small row that says who registered it) and ``pruned`` entries;
* held events (no job was ever registered for their (source, external_id)) are deleted;
* events of a ``complete`` job whose last change is older than the retention are thinned to
  the ones its state needs: a candidate set (the state transitions, then every applied event)
  is kept only if folding it alone reproduces the job exactly as stored; otherwise nothing of
  that job is deleted. ``complete`` is terminal, so no later event can need the dropped ones.
  A ``pruned`` trace entry says how many went; a job pruned since its last change is skipped.
* a job's row, its keys, and the events of queued / processing / failed jobs are never
  deleted: they are the current state and what a later re-fold starts from.

Separately, verified deliveries older than ``delivery_retention_days`` (default 7) lose their
raw body and headers (CONTRACT §10): the delivery row stays (until ``retention_days``), but it
can no longer be replayed, nor its ``delivery.<source>`` message sent.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, null, or_, select, update

from gateway import states
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import Delivery, Event, Job, JobKey, TraceEntry
from gateway.store import Store, event_of

FIND_LIMIT = 20


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Found:
    """A job that matched a search, and why."""

    job_id: str
    source: str
    external_id: str
    label: str | None
    state: str
    updated_at: str | None
    matched: str  # id / id prefix / external id / linked external id / event id / delivery id / request id / part of external id / label

    @property
    def exact(self) -> bool:
        """Matched on a whole identifier the ticket may carry instead of the job id."""
        return self.matched in ("id", "external id", "linked external id", "event id")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.job_id, "source": self.source, "external_id": self.external_id, "label": self.label,
                "state": self.state, "updated_at": self.updated_at, "matched": self.matched}


def find_jobs(store: Store, text: str, limit: int = FIND_LIMIT) -> list[Found]:
    """Jobs whose id starts with ``text``, whose (linked) external id, a provider event id, a
    delivery id (with or without ``dlv_``) or a delivery's request id is ``text``, or whose external id or label contains it; exact matches first, newest first.

    Each lookup has the form an index serves (migration 0007_search): equality on indexed ids
    first, an id prefix by ``LIKE 'x%'``, substrings by ``ILIKE '%x%'`` (pg_trgm GIN on
    PostgreSQL; a plain scan on SQLite). A whole job id ends the search: nothing else is nearer."""
    text = text.strip()[:255]  # nothing stored is longer
    if not text:
        return []
    pattern = f"%{_like(text)}%"
    found: dict[str, Found] = {}
    with store.reading() as session:

        def add(rows: Any, why: str) -> None:
            for job in rows:
                if job.id not in found and len(found) < limit:
                    found[job.id] = Found(job.id, job.source, job.external_id, job.label, job.state, iso(job.updated_at), why)

        newest = Job.updated_at.desc()
        add(session.scalars(select(Job).where(Job.id == text)), "id")
        if found:
            return list(found.values())
        add(session.scalars(select(Job).where(Job.id.like(_like(text) + "%", escape="\\")).order_by(newest).limit(limit)), "id prefix")
        add(session.scalars(select(Job).where(Job.external_id == text).order_by(newest).limit(limit)), "external id")
        add(session.scalars(select(Job).join(JobKey, JobKey.job_id == Job.id).where(JobKey.external_id == text).order_by(newest).limit(limit)), "linked external id")
        add(session.scalars(select(Job).join(Event, Event.job_id == Job.id).where(Event.event_id == text).limit(limit)), "event id")
        number = text.removeprefix("dlv_")
        if number.isdigit() and len(number) < 19:
            add(session.scalars(select(Job).join(Delivery, Delivery.job_id == Job.id).where(Delivery.id == int(number))), "delivery id")
        add(session.scalars(select(Job).join(Delivery, Delivery.job_id == Job.id).where(Delivery.request_id == text).limit(limit)), "request id")
        for column, why in ((Job.external_id, "part of external id"), (Job.label, "label")):
            if len(found) < limit:
                add(session.scalars(select(Job).where(column.ilike(pattern, escape="\\")).order_by(newest).limit(limit)), why)
    return list(found.values())


def suggest(store: Store, text: str, limit: int = 5) -> list[Found]:
    """Closest jobs for an id that does not exist: what ``find`` gives, else near spellings of
    the id and of external ids (a mistyped or truncated paste)."""
    hits = [f for f in find_jobs(store, text, limit) if f.job_id != text]
    if hits:
        return hits[:limit]
    core = text.strip()[:255]
    if not core:
        return []
    with store.reading() as session:
        stems = {core[: max(4, len(core) * n // 8)] for n in (6, 4, 2)}
        pool: dict[str, Job] = {}
        for stem in sorted(stems, key=len, reverse=True):
            cond = or_(Job.id.like(_like(stem) + "%", escape="\\"), Job.external_id.like(_like(stem) + "%", escape="\\"))
            for job in session.scalars(select(Job).where(cond).order_by(Job.updated_at.desc()).limit(200)):
                pool.setdefault(job.id, job)
            if len(pool) >= limit:
                break
    names = {j.id: j for j in pool.values()} | {j.external_id: j for j in pool.values()}
    out: list[Found] = []
    for name in difflib.get_close_matches(core, list(names), n=limit * 2, cutoff=0.6):
        job = names[name]
        if all(f.job_id != job.id for f in out):
            why = "similar id" if name == job.id else "similar external id"
            out.append(Found(job.id, job.source, job.external_id, job.label, job.state, iso(job.updated_at), why))
    return out[:limit]


def resolve_job(store: Store, text: str) -> tuple[str | None, Found | None, list[Found]]:
    """The job ``text`` names, as the CLI and the trace API take it: a job id, or an external id or
    provider event id that names exactly one job. Returns (job id or None, the match when it was
    not the job id itself, the closest matches for a message)."""
    text = text.strip()
    with store.reading() as session:
        if session.get(Job, text) is not None:
            return text, None, []
    hints = suggest(store, text)
    exact = [h for h in hints if h.exact]
    if len(exact) == 1:
        return exact[0].job_id, exact[0], hints
    return None, None, hints


def list_deliveries(
    store: Store,
    *,
    rejected: bool = False,
    outcome: str | None = None,
    source: str | None = None,
    job_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Recent deliveries, newest first; ``rejected`` keeps those answered 4xx (bad signature,
    too large, unreadable); ``outcome`` keeps one outcome (``rejected``: refused before it was
    verified, its event and external ids only claimed); ``since`` / ``until`` bound the receipt
    time (until excluded). A verified delivery's stored body and headers (for replay,
    gateway/replay.py) are never shown."""
    stmt = select(Delivery).order_by(Delivery.received_at.desc(), Delivery.id.desc()).limit(limit).offset(offset)
    if rejected:
        stmt = stmt.where(Delivery.status >= 400)
    if outcome:
        stmt = stmt.where(Delivery.outcome == outcome)
    if source:
        stmt = stmt.where(Delivery.source == source)
    if job_id:
        stmt = stmt.where(Delivery.job_id == job_id)
    if since is not None:
        stmt = stmt.where(Delivery.received_at >= since)
    if until is not None:
        stmt = stmt.where(Delivery.received_at < until)
    with store.reading() as session:
        return [
            {"id": d.id, "received_at": iso(d.received_at), "source": d.source, "status": d.status, "outcome": d.outcome,
             "reason": d.reason, "size": d.size, "remote_addr": d.remote_addr, "request_id": d.request_id,
             "event_id": d.event_id, "event_type": d.event_type, "external_id": d.external_id, "job_id": d.job_id,
             "decision": d.decision, "verified": d.outcome != "rejected"}
            for d in session.scalars(stmt)
        ]


# -- pruning -----------------------------------------------------------------------------------


@dataclass
class Pruned:
    """How many rows ``prune`` deleted (or would delete, on a dry run)."""

    cutoff: str
    bodies_cutoff: str | None = None
    bodies: int = 0  # deliveries whose raw body and headers were cleared
    deliveries: int = 0
    trace: int = 0
    held_events: int = 0
    job_events: int = 0
    jobs_thinned: int = 0
    jobs_kept_whole: int = 0
    kept_whole_sample: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def prune(store: Store, retention_days: int, *, body_days: int | None = None, now: datetime | None = None, dry_run: bool = False,
          batch: int = 200) -> Pruned:
    """Delete history older than ``retention_days`` by the module's rule, and clear the raw bodies
    and headers of deliveries older than ``body_days`` (``delivery_retention_days``); never a job's state."""
    if retention_days < 1 or (body_days is not None and body_days < 1):
        raise ValueError("retention_days and delivery_retention_days must be at least 1")
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    report = Pruned(cutoff=iso(cutoff) or "")
    if body_days is not None:
        bodies_cutoff = (now or utcnow()) - timedelta(days=body_days)
        report.bodies_cutoff = iso(bodies_cutoff)
        report.bodies = _clear_bodies(store, bodies_cutoff, dry_run, batch * 5)
    report.deliveries = _delete_in_batches(store, Delivery, Delivery.received_at < cutoff, dry_run, batch * 25)
    kept_entries = TraceEntry.what.in_(("registered", "pruned"))
    report.trace = _delete_in_batches(store, TraceEntry, and_(TraceEntry.at < cutoff, ~kept_entries), dry_run, batch * 25)
    report.held_events = _delete_in_batches(store, Event, and_(Event.job_id.is_(None), Event.received_at < cutoff), dry_run, batch * 25)
    candidates = _complete_before(store, cutoff)
    for start in range(0, len(candidates), batch):
        with store.transaction() as w:
            for job_id in candidates[start:start + batch]:
                job = w.lock_job(job_id)  # a late event refolding this job waits for us, and we for it
                if job.state != states.State.COMPLETE.value:
                    continue
                drop = _droppable(w.session, job)
                if drop is None:
                    report.jobs_kept_whole += 1
                    if len(report.kept_whole_sample) < 20:
                        report.kept_whole_sample.append(job_id)
                elif drop:
                    report.jobs_thinned += 1
                    report.job_events += len(drop)
                if not dry_run:
                    if drop:
                        w.session.execute(delete(Event).where(Event.id.in_(drop)))
                    # says so in the trace, and spares this job the work next time
                    w.trace(job_id, "pruned", {"events_deleted": len(drop or []), "older_than": report.cutoff, "kept_all": drop is None})
    return report


def _delete_in_batches(store: Store, model: Any, where: Any, dry_run: bool, size: int) -> int:
    """Delete matching rows a batch per transaction, so writers beside us wait only briefly; the count."""
    if dry_run:
        with store.reading() as session:
            return session.scalar(select(func.count()).select_from(model).where(where)) or 0
    total = 0
    while True:
        with store.transaction() as w:
            ids = list(w.session.scalars(select(model.id).where(where).limit(size)))
            if ids:
                w.session.execute(delete(model).where(model.id.in_(ids)))
        total += len(ids)
        if len(ids) < size:
            return total


def _clear_bodies(store: Store, cutoff: datetime, dry_run: bool, size: int) -> int:
    """Clear the stored body and headers of deliveries received before ``cutoff``, a batch per
    transaction (bodies are up to ``max_body_bytes`` each); the count."""
    where = and_(Delivery.received_at < cutoff, Delivery.body.is_not(None))
    if dry_run:
        with store.reading() as session:
            return session.scalar(select(func.count()).select_from(Delivery).where(where)) or 0
    total = 0
    while True:
        with store.transaction() as w:
            ids = list(w.session.scalars(select(Delivery.id).where(where).limit(size)))
            if ids:
                w.session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(body=None, headers=null())
                                  .execution_options(synchronize_session=False))
        total += len(ids)
        if len(ids) < size:
            return total


def _complete_before(store: Store, cutoff: datetime) -> list[str]:
    """Complete jobs unchanged since before the cutoff and not pruned since their last change."""
    pruned = select(TraceEntry.id).where(TraceEntry.job_id == Job.id, TraceEntry.what == "pruned", TraceEntry.at >= Job.updated_at)
    with store.reading() as session:
        return list(session.scalars(
            select(Job.id).where(Job.state == states.State.COMPLETE.value, Job.updated_at < cutoff, ~pruned.exists()).order_by(Job.id)
        ))


def _shown(view: states.JobView) -> tuple[Any, ...]:
    return (*view.public(), view.state_changed_at, view.updated_at)


def thin(
    created_at: datetime, events: list[states.Event], links: list[states.Link], label: str | None,
) -> list[states.Event] | None:
    """The events a complete job's fold needs (pure): the state transitions, else every applied
    event; None when the job is not complete or neither set folds to exactly the same job."""
    full, decisions = states.fold(created_at, events, links, label)
    if full.state is not states.State.COMPLETE:
        return None
    applied = [e for e in sorted(events, key=states.Event.sort_key) if decisions.get(e.uid) is states.Decision.APPLIED]
    transitions, previous = [], None
    for e in applied:
        if e.kind is states.Kind.LINK or e.label or e.state is not previous:
            transitions.append(e)
        previous = e.state if e.state is not None else previous
    for keep in (transitions, applied):
        if _shown(states.fold(created_at, keep, links, label)[0]) == _shown(full):
            return keep
    return None


def _droppable(session: Any, job: Job) -> list[int] | None:
    """Ids of the job's events that can go with the fold unchanged; None if no candidate set reproduces it."""
    rows = session.scalars(select(Event).where(Event.job_id == job.id)).all()
    links = [states.Link(key=(k.source, k.external_id), at=k.linked_at, uid=f"{k.id:012d}")
             for k in session.scalars(select(JobKey).where(JobKey.job_id == job.id))]
    events = [event_of(r) for r in rows]
    full, _ = states.fold(job.created_at, events, links, job.registered_label)
    if (full.state.value, full.attempt, full.label, full.progress, full.error, full.result) != (
            job.state, job.attempt, job.label, job.progress, job.error, job.result):
        return None  # the row and its events disagree already: touch nothing
    keep = thin(job.created_at, events, links, job.registered_label)
    if keep is None:
        return None
    kept = {e.uid for e in keep}
    return [r.id for r in rows if f"{r.source}:{r.event_id}" not in kept]


def source_activity(store: Store, since: datetime) -> dict[str, dict[str, Any]]:
    """Per source: deliveries by outcome since ``since``, and when the last one (ever) arrived."""
    out: dict[str, dict[str, Any]] = {}
    with store.reading() as session:
        recent = select(Delivery.source, Delivery.outcome, func.count()).where(Delivery.received_at >= since)
        for source, outcome, n in session.execute(recent.group_by(Delivery.source, Delivery.outcome)):
            out.setdefault(source, {"counts": {}, "last": None})["counts"][outcome] = n
        for source, last in session.execute(select(Delivery.source, func.max(Delivery.received_at)).group_by(Delivery.source)):
            out.setdefault(source, {"counts": {}, "last": None})["last"] = last
    return out
