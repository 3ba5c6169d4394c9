"""The one writer path: every change to a job goes through ``Store.transaction()`` and ``Writer``.

A writer records an event (deduplicated on (source, event id), and on (source, digest) when
given, by the database itself), then folds it into its job under the job's row lock: incrementally
when it is the newest event, by a full re-fold of the job's events when it arrived late. Queue
positions of the jobs behind are recomputed in the same transaction (queues.py). The changed
(job id, version) pairs are handed to the bus inside the transaction (PostgreSQL NOTIFY is
transactional) and after commit (unit.py). On PostgreSQL a known job's webhook that touches no
queue takes the fast path (fastpath.py): the same statements in two round trips.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from adapters.base import ProviderEvent
from gateway import states
from gateway.errors import BadRequest, Conflict
from gateway.ids import JOB_ID_RE, new_job_id, utcnow
from gateway.models import Base, Delivery, Event, Job, JobKey
from gateway.states import Decision, Kind, State
from gateway.store import fastpath
from gateway.store import statements as sql
from gateway.store.queues import Queues, may_move_a_queue, takes_queue_lock
from gateway.store.rows import event_of, fold_event, job_columns, links_of, public, queue_name_of, unversioned, view_of
from gateway.store.unit import RetryTransaction

GATEWAY_SOURCE = "gateway"  # events the gateway itself records: retries, links, watchdog
API_SOURCE = "api"  # events reported through POST /api/jobs/<id>/events

_JOB_OF_KEY = (
    select(JobKey.job_id, Job.queue_name, Job.state)
    .join(Job, Job.id == JobKey.job_id)
    .where(JobKey.source == bindparam("source"), JobKey.external_id == bindparam("external_id"))
)
_LINKS = select(JobKey.id, JobKey.source, JobKey.external_id, JobKey.linked_at).where(JobKey.job_id == bindparam("job_id"))
_INSERT_EVENT = {dialect: sql.insert_event(dialect) for dialect in ("postgresql", "sqlite")}
_HISTORY = select(Event.source, Event.event_id, Event.external_id, Event.kind, Event.state, Event.occurred_at, Event.data).where(
    Event.job_id == bindparam("job_id"))


@dataclass
class Outcome:
    """What happened to one recorded event: the decision and the job before and after."""

    decision: Decision
    job_id: str | None = None
    state_before: str | None = None
    state_after: str | None = None
    version: int | None = None


class Writer(Queues):
    """The operations that change jobs, inside one transaction."""

    # -- events -----------------------------------------------------------------------------

    def record_event(
        self,
        source: str,
        pe: ProviderEvent,
        *,
        kind: Kind = Kind.PROVIDER,
        job_id: str | None = None,
        auto_register: bool = False,
        received_at: datetime | None = None,
        digest: str | None = None,
    ) -> Outcome:
        """Record one event exactly once and apply it to its job, if the job is known yet.
        ``digest`` (of the signed content) dedups too, for providers whose event id is unsigned."""
        received_at = received_at or utcnow()
        values = dict(
            source=source,
            event_id=pe.event_id,
            external_id=pe.external_id,
            job_id=job_id,
            kind=kind.value,
            type=pe.type or None,
            state=pe.state.value if pe.state else None,
            occurred_at=pe.occurred_at,
            received_at=received_at,
            data={k: v for k, v in (("progress", pe.progress), ("queue", pe.queue), ("error", pe.error), ("result", pe.result), ("label", pe.label)) if v is not None} or None,
            digest=digest,
        )
        if job_id is None and self.postgres and kind is Kind.PROVIDER:
            return self._record_by_key(pe, values, auto_register=auto_register)
        self._catch_up()
        seen: Any = None  # (queue_name, state) read with the key: saves a round trip before the lock
        if job_id is None:
            seen = self.session.execute(_JOB_OF_KEY, {"source": source, "external_id": pe.external_id}).first()
            job_id = seen.job_id if seen is not None else None
            if job_id is None and auto_register and pe.state is not None:
                job_id = self.register(source, pe.external_id, None, pe.label, queue_name_of(pe.queue), who="auto")[0].id
        values["job_id"] = job_id
        if not self._insert_event(values):
            return Outcome(Decision.DUPLICATE, job_id=self._job_of_event(source, pe.event_id, digest))
        if job_id is None:
            return Outcome(Decision.HELD)
        return self._apply(job_id, fold_event(source, pe, kind), may_queue=pe.state is State.QUEUED, seen=seen)

    def _record_by_key(self, pe: ProviderEvent, values: dict[str, Any], *, auto_register: bool) -> Outcome:
        """PostgreSQL, a provider's event: the common case in two round trips (fastpath.py);
        the rest goes on through the ORM path from the locks taken."""
        source = values["source"]
        if self._session is not None and (self._session.dirty or self._session.new):
            self._session.flush()  # the raw statements below must see what the ORM holds
        may_queue = pe.state is State.QUEUED
        with fastpath.driver_errors(self.conn):
            found = fastpath.insert_and_lock(self.fast(), values, may_queue=may_queue)
        if not found.inserted:
            return Outcome(Decision.DUPLICATE, job_id=self._job_of_event(source, pe.event_id, values["digest"]))
        job, event = found.job, fold_event(source, pe, Kind.PROVIDER)
        if job is not None and job.id in self._raw_jobs:
            # an earlier event of this transaction (a group commit's, or the same body's) moved
            # the job: its row is this one, its UPDATE still to be written (under the lock held)
            job = self._raw_jobs[job.id]
        if job is None or found.event_job_id != job.id:
            if job is not None or found.event_job_id is not None:
                raise RetryTransaction("the key was registered between two statements")
            if not (auto_register and pe.state is not None):
                return Outcome(Decision.HELD)
            registered, _ = self.register(source, pe.external_id, None, pe.label, queue_name_of(pe.queue), who="auto")
            return Outcome(self._adopted.get(event.uid, Decision.APPLIED), registered.id, State.QUEUED.value, registered.state)
        if takes_queue_lock(job.state, may_queue=False) and found.queue_locked != job.queue_name:
            with fastpath.driver_errors(self.conn):
                fastpath.lock_queue(self.fast(), job.queue_name)  # it entered a queue just now
        keys = (job.fold or {}).get("keys")
        view = view_of(job)
        newest = view.last is None or event.sort_key() > view.last
        if keys is not None and newest and job.id not in self._held:
            links = links_of(keys)
            after, decision = states.apply(view, event, links)
            if not may_move_a_queue(job.state, after.state):
                return self._write_by_key(job, after, links, decision)
        # late, queue-bound or already in this session's hands: the ORM path, from here
        self._catch_up()  # it reads the job from the database
        return self._apply(job.id, event, may_queue=may_queue, seen=job)

    def _write_by_key(self, job: Any, view: states.JobView, links: list[states.Link], decision: Decision) -> Outcome:
        """The new view into the raw row; its UPDATE goes with the closing writes."""
        state_before, before, shown = job.state, public(job), unversioned(job)
        for key, value in job_columns(job, view, links).items():
            setattr(job, key, value)
        self._bump(job, before, shown)
        self._raw_jobs[job.id] = job
        return Outcome(decision, job.id, state_before, job.state, None)

    def _apply(self, job_id: str, event: states.Event, *, may_queue: bool, seen: Any = None) -> Outcome:
        job = self._lock_job(job_id, queue_lock=may_queue, seen=seen)
        before = job.state
        view = view_of(job)
        links = self._links(job_id, job)
        if view.last is None or event.sort_key() > view.last:
            view, decision = states.apply(view, event, links)
        else:
            old = view
            view, decision = self._refold(job, links, event.uid)
            if decision is Decision.APPLIED and view.public() == old.public() and view.queue == old.queue:
                decision = Decision.STALE  # arrived late: history absorbs it, the job does not move
        self._store_view(job, view, links)
        return Outcome(decision, job_id, before, job.state, None)

    def _refold(self, job: Job, links: list[states.Link], uid: str | None) -> tuple[states.JobView, Decision]:
        view, decisions = states.fold(job.created_at, self._history(job.id), links, job.registered_label)
        return view, decisions.get(uid or "", Decision.APPLIED)

    def _history(self, job_id: str) -> list[states.Event]:
        """Every event filed under the job, as the fold sees them: read as plain rows of the
        columns the fold uses, not as ORM objects (a late event re-folds the whole history, and
        loading it into the identity map cost several times the fold itself)."""
        rows = self.session.execute(_HISTORY, {"job_id": job_id}).all()
        return [event_of(r) for r in rows]

    # -- registration, retry, attempts ------------------------------------------------------

    def register(
        self,
        source: str,
        external_id: str,
        job_id: str | None,
        label: str | None,
        queue_name: str | None,
        *,
        who: str,
    ) -> tuple[Job, bool]:
        """The job for (source, external_id), created if new; events that came first are adopted."""
        self._catch_up()
        existing = self._job_for_key(source, external_id)
        if existing is not None:
            job = self.session.get(Job, existing)
            assert job is not None
            if job_id is not None and job_id != job.id:
                raise Conflict(f"{source}/{external_id} is already registered as another job", code="id_mismatch")
            return job, False
        if job_id is not None:
            if not JOB_ID_RE.match(job_id):
                raise BadRequest("id must be job_ followed by 1-60 of [A-Za-z0-9_-]", code="invalid_id")
            if self.session.get(Job, job_id) is not None:
                raise Conflict("this id is already used by another job", code="id_taken")
        job_id = job_id or new_job_id()
        now = utcnow()
        view = states.initial(now, label)
        job = Job(
            id=job_id,
            source=source,
            external_id=external_id,
            label=label,
            registered_label=label,
            queue_name=queue_name or "default",
            registered_queue=queue_name or "default",
            state=view.state.value,
            version=0,
            attempt=1,
            created_at=now,
            updated_at=now,
            state_changed_at=now,
            queued_since=now,
            fold={},
        )
        try:
            with self.session.begin_nested():
                self.session.add(job)
                self.session.add(JobKey(source=source, external_id=external_id, job_id=job_id, linked_at=None))
        except IntegrityError:
            # lost a race for the same key or id: the other registration wins
            winner = self._job_for_key(source, external_id)
            if winner is None:
                raise Conflict("this id is already used by another job", code="id_taken") from None
            found = self.session.get(Job, winner)
            assert found is not None
            return found, False
        self._before[job_id] = ()
        self._touched[job_id] = job
        self.trace(job_id, "registered", {"source": source, "external_id": external_id, "label": label, "queue": job.queue_name, "by": who}, at=now)
        self._adopt(job, source, external_id)
        return job, True

    def retry(self, job_id: str, *, by: str) -> Job:
        """Open the next attempt of a failed, retryable job in `queued`; one attempt however many clicks."""
        self._catch_up()
        job = self._lock_job(job_id, queue_lock=True)
        if job.state != State.FAILED.value:
            raise Conflict(f"job is {job.state}, only a failed job can be retried", code="not_failed")
        if not (job.error or {}).get("retryable", True):
            raise Conflict("the provider marked this failure as not retryable", code="not_retryable")
        at = states.retry_time(view_of(job), utcnow())
        pe = ProviderEvent(event_id=f"retry:{job.id}:{job.attempt}", external_id=job.external_id, occurred_at=at, state=State.QUEUED, type="retry")
        outcome = self.record_event(GATEWAY_SOURCE, pe, kind=Kind.RETRY, job_id=job.id)
        if outcome.decision is not Decision.APPLIED:
            raise Conflict("job is no longer failed", code="not_failed")
        self.trace(job.id, "retry", {"by": by, "attempt": job.attempt}, at=at)
        return job

    def link_attempt(self, job_id: str, source: str, external_id: str, *, by: str) -> Job:
        """Bind the next attempt's (source, external_id) to the job; its events drive the job from now on."""
        self._catch_up()
        job = self._lock_job(job_id, queue_lock=True)
        owner = self._job_for_key(source, external_id)
        if owner == job.id:
            return job
        if owner is not None:
            raise Conflict(f"{source}/{external_id} already drives another job", code="key_taken")
        if job.state == State.COMPLETE.value:
            raise Conflict("job is complete", code="job_complete")
        now = utcnow()
        self.session.add(JobKey(source=source, external_id=external_id, job_id=job.id, linked_at=now))
        self.session.flush()
        pe = ProviderEvent(event_id=f"link:{job.id}:{source}:{external_id}", external_id=external_id, occurred_at=now, state=None, type="attempt.linked")
        self._insert_ignore(
            Event,
            dict(
                source=GATEWAY_SOURCE, event_id=pe.event_id, external_id=external_id, job_id=job.id, kind=Kind.LINK.value, type=pe.type,
                state=None, occurred_at=now, received_at=now, data={"key": [source, external_id]},
            ),
            conflict=("source", "event_id"),
        )
        self.trace(job.id, "attempt_linked", {"source": source, "external_id": external_id, "by": by}, at=now)
        self._adopt(job, source, external_id)
        return job

    def _adopt(self, job: Job, source: str, external_id: str) -> None:
        """Claim events and deliveries that arrived for this key before the job knew it, and re-fold."""
        self._insert_rows()  # this transaction's own deliveries too
        self.session.execute(
            update(Event).where(Event.source == source, Event.external_id == external_id, Event.job_id.is_(None)).values(job_id=job.id)
        )
        self.session.execute(
            update(Delivery).where(Delivery.source == source, Delivery.external_id == external_id, Delivery.job_id.is_(None)).values(job_id=job.id)
        )
        self.session.flush()
        links = self._links(job.id)  # from the table: a key may have been added just now
        view, self._adopted = states.fold(job.created_at, self._history(job.id), links, job.registered_label)
        self._store_view(job, view, links)

    def job_for_key(self, source: str, external_id: str) -> str | None:
        """The job registered for (source, external id), if any (e.g. the one a rejected delivery claims)."""
        return self._job_for_key(source, external_id)

    def _job_for_key(self, source: str, external_id: str) -> str | None:
        return self.session.scalar(select(JobKey.job_id).where(JobKey.source == source, JobKey.external_id == external_id))

    def _job_of_event(self, source: str, event_id: str, digest: str | None = None) -> str | None:
        same = Event.event_id == event_id if digest is None else or_(Event.event_id == event_id, Event.digest == digest)
        return self.session.scalar(select(Event.job_id).where(Event.source == source, same).limit(1))

    def _links(self, job_id: str, locked: Job | None = None) -> list[states.Link]:
        """The job's keys as the fold sees them. From the ``locked`` row's fold when it carries
        them (every key is added under the row lock, and the same transaction rewrites the fold),
        else from the table."""
        kept = (locked.fold or {}).get("keys") if locked is not None else None
        if kept is not None:
            return links_of(kept)
        rows = self.session.execute(_LINKS, {"job_id": job_id}).all()
        return [states.Link(key=(r.source, r.external_id), at=r.linked_at, uid=f"{r.id:012d}") for r in rows]

    def _insert_event(self, values: dict[str, Any]) -> int | None:
        """Insert an event unless (source, event_id) is taken; its id, or None for a duplicate."""
        return self.session.execute(_INSERT_EVENT["postgresql" if self.postgres else "sqlite"], values).scalar()

    def _insert_ignore(self, model: type[Base], values: dict[str, Any], *, conflict: tuple[str, ...]) -> int | None:
        """Insert a row unless ``conflict``'s columns are taken; its id, or None."""
        table = cast(Table, model.__table__)
        dialect = postgresql if self.postgres else sqlite
        stmt = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict)).returning(table.c.id)
        return self.session.execute(stmt).scalar()
