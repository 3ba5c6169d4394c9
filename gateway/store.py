"""The one writer path: every change to a job goes through ``Store.transaction()`` and ``Writer``.

A writer records an event (deduplicated on (source, event id), and on (source, digest) when
given, by the database itself), then folds it into its job under the job's row lock: incrementally when it is the newest event,
by a full re-fold of the job's events when it arrived late. Queue positions of the jobs
behind are recomputed in the same transaction. The changed (job id, version) pairs are handed
to the bus inside the transaction (PostgreSQL NOTIFY is transactional) and after commit.
"""

from __future__ import annotations

import os
import re
import secrets as pysecrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import psycopg
from sqlalchemy import Connection, Engine, Table, bindparam, inspect, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from adapters.base import ProviderEvent
from gateway import hotpath, states
from gateway.db import READ_ONLY
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.models import Delivery, Event, Job, JobKey, TraceEntry
from gateway.states import Decision, Kind, State

T = TypeVar("T")
TRANSIENT_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure

GATEWAY_SOURCE = "gateway"  # events the gateway itself records: retries, links, watchdog
API_SOURCE = "api"  # events reported through POST /api/jobs/<id>/events
JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9_-]{1,60}\Z")  # \Z: "$" would also match before a final newline

# The hot path's statements, built once: SQLAlchemy compiles each once per engine and reuses it.
_JOB_OF_KEY = (
    select(JobKey.job_id, Job.queue_name, Job.state)
    .join(Job, Job.id == JobKey.job_id)
    .where(JobKey.source == bindparam("source"), JobKey.external_id == bindparam("external_id"))
)
_QUEUE_OF_JOB = select(Job.queue_name, Job.state).where(Job.id == bindparam("job_id"))
# NO KEY UPDATE, not UPDATE: inserting an event takes KEY SHARE on its job row (the foreign
# key), and FOR UPDATE would deadlock two writers that both inserted first
_LOCK_JOB = select(Job).where(Job.id == bindparam("job_id")).with_for_update(key_share=True).execution_options(populate_existing=True)
_LINKS = select(JobKey.id, JobKey.source, JobKey.external_id, JobKey.linked_at).where(JobKey.job_id == bindparam("job_id"))
_QUEUE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:k))")
_DELIVERIES, _TRACE = cast(Table, Delivery.__table__), cast(Table, TraceEntry.__table__)
# inline: no generated id asked back, so the INSERT needs no answer before the COMMIT
_INSERTS = {table.name: table.insert().inline() for table in (_DELIVERIES, _TRACE)}
# SET takes the columns given in the parameters: the ones that changed
_UPDATE_JOB = update(cast(Table, Job.__table__)).where(Job.__table__.c.id == bindparam("job_id_"))
_INSERT_EVENT = {
    # no conflict target: a taken (source, event_id) or (source, digest) both make a duplicate
    name: dialect.insert(Event.__table__).on_conflict_do_nothing().returning(Event.__table__.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def utcnow() -> datetime:
    """Now, in UTC, truncated to milliseconds like every stored event time."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id() -> str:
    """``job_`` + a ULID: sortable by creation time, unguessable, safe in URLs."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars))


@dataclass(frozen=True)
class Change:
    """A job whose JSON changed, and its new version: what watchers are told."""

    job_id: str
    version: int
    progress_only: bool = False  # only the progress moved: the relay may coalesce it (relay/coalesce.py)
    state_changed: bool = True  # the state differs from the previous version's (forwarding: job.<state>)


class Bus(Protocol):
    """Carries changes to watchers in every process; see gateway.relay."""

    def publish_in_transaction(self, writer: Writer, changes: Sequence[Change]) -> None: ...

    def published(self, changes: Sequence[Change]) -> None: ...


class NullBus:
    def publish_in_transaction(self, writer: Writer, changes: Sequence[Change]) -> None:
        pass

    def published(self, changes: Sequence[Change]) -> None:
        pass


@contextmanager
def driver_errors(conn: Connection) -> Iterator[None]:
    """psycopg's errors from statements run on the transaction's connection but not through
    SQLAlchemy, raised as SQLAlchemy's (which the app maps to HTTP once); a connection found
    dead is invalidated, so the pool never hands it out again and ``Store.write`` may retry."""
    try:
        yield
    except psycopg.Error as err:
        raw = conn.connection.driver_connection
        dead = raw is None or raw.closed or raw.broken
        if dead:
            conn.invalidate(err)
        raise DBAPIError.instance(None, None, err, psycopg.Error, connection_invalidated=dead) from err


class RetryTransaction(Exception):
    """Another transaction changed what this one read between two statements: run it again."""


@dataclass
class Outcome:
    """What happened to one recorded event: the decision and the job before and after."""

    decision: Decision
    job_id: str | None = None
    state_before: str | None = None
    state_after: str | None = None
    version: int | None = None


class Store:
    """Owns the session factory; hands out one transaction per webhook or API call."""

    def __init__(self, engine: Engine, bus: Bus | None = None):
        self.engine = engine
        self.bus: Bus = bus or NullBus()
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.postgres = engine.dialect.name == "postgresql"
        # called in every transaction once its changes are final, before the commit: what the
        # changes owe (forwarded messages, gateway.forward) is written in the same transaction
        self.owing: list[Callable[[Writer], None]] = []

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        """One database transaction; changes reach the bus with the commit, never before."""
        with self.engine.connect() as conn:
            writer = Writer(conn, self.sessions, self.postgres)
            writer.forwarding = bool(self.owing)
            try:
                with conn.begin():
                    yield writer
                    writer.close(self.bus, self.owing)
            finally:
                writer.release()  # after the commit or the rollback
        if writer.changes:
            self.bus.published(writer.changes)
        for fn in writer.committed:
            fn()

    def write(self, fn: Callable[[Writer], T], attempts: int = 3) -> tuple[T, list[Change]]:
        """Run ``fn`` in one transaction, again from the start if PostgreSQL reports a transient
        conflict (deadlock, serialization failure) or the pooled connection turned out dead;
        returns its result and the changes. Nothing of a failed attempt was committed."""
        for attempt in range(attempts):
            try:
                with self.transaction() as writer:
                    result = fn(writer)
                return result, writer.changes
            except RetryTransaction:
                if attempt + 1 < attempts:
                    continue
                raise
            except DBAPIError as exc:
                transient = getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES or exc.connection_invalidated
                if attempt + 1 < attempts and transient:
                    continue
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A short read-only session (on SQLite it never takes the write lock)."""
        with self.sessions() as session:
            session.connection(execution_options={READ_ONLY: True})
            yield session

    def get_job(self, job_id: str) -> Job | None:
        with self.reading() as session:
            return session.get(Job, job_id)


class Writer:
    """The operations that change jobs, inside one transaction."""

    def __init__(self, conn: Connection, sessions: sessionmaker[Session], postgres: bool):
        self.conn = conn
        self._sessions = sessions
        self._session: Session | None = None
        self.postgres = postgres
        self.changes: list[Change] = []
        self._before: dict[str, tuple[Any, ...]] = {}
        self._touched: dict[str, Job] = {}
        self._traces: list[TraceEntry] = []  # stamped with the job's version by finish_changes
        self._rows: list[tuple[Any, dict[str, Any]]] = []  # (table, values): inserted with the closing writes
        self._raw_jobs: dict[str, Any] = {}  # rows changed on the hot path (gateway.hotpath), not yet written
        self._raw: Any = None  # the psycopg connection, once asked for
        self._closing_sql: list[tuple[str, Sequence[Any]]] = []  # PostgreSQL: run in one script with the COMMIT
        self._adopted: dict[str, Decision] = {}  # each adopted event's decision, from the last re-fold on adoption
        # every job row this transaction loaded: the session's identity map holds rows weakly,
        # and reading one again (version_of, traces) must not cost another SELECT
        self._held: dict[str, Job] = {}
        self.committed: list[Callable[[], None]] = []  # run after the commit (e.g. wake the outbox)
        self.forwarding = False  # changes owe messages: the ORM path, which the owing hooks read

    @property
    def session(self) -> Session:
        """The ORM session, joined to this transaction's connection, opened on first use: the
        hot path needs none (gateway.hotpath), and a session costs more than the SQL it saves."""
        if self._session is None:
            self._session = self._sessions(bind=self.conn)  # joins the transaction; never commits it
        return self._session

    def release(self) -> None:
        """After the commit or the rollback: close the session (its objects stay readable,
        detached) and hand psycopg its own transactions back."""
        if self._session is not None:
            self._session.close()
        if self._raw is not None:
            hotpath.end_own_begin(self._raw)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once this transaction has committed (never if it rolls back)."""
        if fn not in self.committed:
            self.committed.append(fn)

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
        self._catch_up()
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
        seen: Any = None  # (queue_name, state) read with the key: saves a round trip before the lock
        if job_id is None:
            seen = self.session.execute(_JOB_OF_KEY, {"source": source, "external_id": pe.external_id}).first()
            job_id = seen.job_id if seen is not None else None
            if job_id is None and auto_register and pe.state is not None:
                job_id = self.register(source, pe.external_id, None, pe.label, _queue_name(pe.queue), who="auto")[0].id
        values["job_id"] = job_id
        if not self._insert_event(values):
            return Outcome(Decision.DUPLICATE, job_id=self._job_of_event(source, pe.event_id, digest))
        if job_id is None:
            return Outcome(Decision.HELD)
        return self._apply(job_id, _fold_event(source, pe, kind), may_queue=pe.state is State.QUEUED, seen=seen)

    def _record_by_key(self, pe: ProviderEvent, values: dict[str, Any], *, auto_register: bool) -> Outcome:
        """PostgreSQL, a provider's event: the common case in two round trips (gateway.hotpath);
        the rest goes on through the ORM path from the locks taken."""
        source = values["source"]
        if self._session is not None and (self._session.dirty or self._session.new):
            self._session.flush()  # the raw statements below must see what the ORM holds
        may_queue = pe.state is State.QUEUED
        with driver_errors(self.conn):
            found = hotpath.insert_and_lock(self._driver_connection(), values, may_queue=may_queue)
        if not found.inserted:
            return Outcome(Decision.DUPLICATE, job_id=self._job_of_event(source, pe.event_id, values["digest"]))
        job, event = found.job, _fold_event(source, pe, Kind.PROVIDER)
        if job is None or found.event_job_id != job.id:
            if job is not None or found.event_job_id is not None:
                raise RetryTransaction("the key was registered between two statements")
            if not (auto_register and pe.state is not None):
                return Outcome(Decision.HELD)
            registered, _ = self.register(source, pe.external_id, None, pe.label, _queue_name(pe.queue), who="auto")
            return Outcome(self._adopted.get(event.uid, Decision.APPLIED), registered.id, State.QUEUED.value, registered.state)
        if job.state in hotpath.QUEUE_STATES and found.queue_locked != job.queue_name:
            with driver_errors(self.conn):
                hotpath.lock_queue(self._driver_connection(), job.queue_name)  # it entered a queue just now
        keys = (job.fold or {}).get("keys")
        view = view_of(job)  # type: ignore[arg-type]
        if keys is not None and not self.forwarding and job.id not in self._held and job.state != State.QUEUED.value and (view.last is None or event.sort_key() > view.last):
            links = links_of(keys)
            after, decision = states.apply(view, event, links)
            if after.state is not State.QUEUED:
                return self._write_by_key(job, after, links, decision)
        # late, queue-bound or already in this session's hands: the ORM path, from here
        return self._apply(job.id, event, may_queue=may_queue, seen=job)

    def _write_by_key(self, job: Any, view: states.JobView, links: list[states.Link], decision: Decision) -> Outcome:
        """The new view into the raw row; its UPDATE goes with the closing writes."""
        state_before, before = job.state, _public(job)
        for key, value in job_columns(job, view, links).items():
            setattr(job, key, value)
        after = _public(job)
        if after != before:
            job.version += 1
            self.changes.append(Change(job.id, job.version, _progress_only(before, after), state_before != job.state))
        self._raw_jobs[job.id] = job
        return Outcome(decision, job.id, state_before, job.state, None)

    def _catch_up(self) -> None:
        """Write the hot path's rows now: what follows reads the jobs from the database."""
        if self._raw_jobs:
            with driver_errors(self.conn):
                hotpath.run(self._driver_connection(), [u for job in self._raw_jobs.values() if (u := hotpath.update_job(job))])
            self._raw_jobs.clear()

    def _driver_connection(self) -> Any:
        """The psycopg connection under this transaction's session."""
        if self._raw is None:
            self._raw = self.conn.connection.driver_connection
        return self._raw

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
        rows = self.session.scalars(select(Event).where(Event.job_id == job.id)).all()
        view, decisions = states.fold(job.created_at, [event_of(r) for r in rows], links, job.registered_label)
        return view, decisions.get(uid or "", Decision.APPLIED)

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
        rows = self.session.scalars(select(Event).where(Event.job_id == job.id)).all()
        view, self._adopted = states.fold(job.created_at, [event_of(r) for r in rows], links, job.registered_label)
        self._store_view(job, view, links)

    # -- trace and deliveries -----------------------------------------------------------------

    def trace(self, job_id: str, what: str, detail: dict[str, Any] | None = None, *, at: datetime | None = None) -> None:
        """A line in the job's trace; it is written with the job's version once the changes are finished."""
        self._traces.append(TraceEntry(job_id=job_id, at=at or utcnow(), what=what, detail=detail))

    def add_delivery(self, **values: Any) -> None:
        """Record one HTTP delivery; written with the transaction's closing writes."""
        row = dict.fromkeys(hotpath.DELIVERY_COLUMNS)
        row.update(size=0, received_at=utcnow())
        row.update(values)
        self._rows.append((_DELIVERIES, row))

    # -- versions and queue positions ------------------------------------------------------------

    def finish_changes(self) -> None:
        """Raise each touched job's version once if its JSON changed, and collect the changes.

        Compared in memory, so each job gets one UPDATE with its new version."""
        for job_id, job in self._touched.items():
            before, after = self._before.get(job_id), _public(job)
            if after != before:
                job.version += 1
                self.changes.append(Change(job_id, job.version, _progress_only(before, after), not before or before[0] != after[0]))
        self._touched.clear()
        self._before.clear()
        for entry in self._traces:
            job = self._known(entry.job_id)
            detail = entry.detail or {}
            if job is not None and "version" not in detail:
                detail = {**detail, "version": job.version}
            self._rows.append((_TRACE, {"job_id": entry.job_id, "at": entry.at, "what": entry.what, "detail": detail or None}))
        self._traces.clear()

    def close(self, bus: Bus, owing: Sequence[Callable[[Writer], None]] = ()) -> None:
        """The transaction's closing writes, then (on PostgreSQL) its COMMIT.

        Changed job rows become plain UPDATEs of the columns that changed (the session is told
        they are written), deliveries and trace lines plain INSERTs; the bus adds its notice.
        On PostgreSQL the hot path's rows, the deliveries, NOTIFY and COMMIT go to the server as
        one script in one round trip (gateway.hotpath); the session's own commit then finds
        nothing left to do."""
        self.finish_changes()
        if self.changes:
            for owe in owing:
                owe(self)
        conn = self.conn
        for job in self._held.values():
            state = inspect(job)
            changed = {a.key: a.value for a in state.attrs if a.history.has_changes()} if state.persistent else None
            if changed:
                conn.execute(_UPDATE_JOB, {"job_id_": job.id, **changed})
                for key, value in changed.items():
                    set_committed_value(job, key, value)
        if self._session is not None:
            self._session.flush()  # anything else the ORM holds (outbox rows)
        rows, self._rows = self._rows, []
        for table, values in rows:
            if self.postgres and table is _DELIVERIES:
                self.closing_sql(*hotpath.insert_delivery(values))
            else:
                conn.execute(_INSERTS[table.name], values)
        for job in self._raw_jobs.values():
            if update := hotpath.update_job(job):
                self.closing_sql(*update)
        self._raw_jobs.clear()
        if self.changes:
            bus.publish_in_transaction(self, self.changes)
        if self.postgres:
            with driver_errors(self.conn):
                hotpath.run_and_commit(self._driver_connection(), self._closing_sql)

    def closing_sql(self, sql: str, params: Sequence[Any]) -> None:
        """PostgreSQL: a statement (``%s`` placeholders) to run with the COMMIT, in its round trip."""
        self._closing_sql.append((sql, params))

    def _insert_rows(self) -> None:
        rows, self._rows = self._rows, []
        conn = self.conn
        for table, values in rows:
            conn.execute(_INSERTS[table.name], values)

    def _store_view(self, job: Job, view: states.JobView, links: list[states.Link]) -> None:
        self._touch(job)
        was_queued, since, left = job.state == State.QUEUED.value, job.queued_since, job.queue_name
        now_queued = view.state is State.QUEUED
        if now_queued:
            # CONTRACT §1: the queue its latest applied `queued` event names, else its registration's
            job.queue_name = _queue_name(view.queue) or job.registered_queue or job.queue_name
            if job.queue_name != left and self.postgres:
                self._queue_lock(job.queue_name)
        for key, value in job_columns(job, view, links).items():
            setattr(job, key, value)
        moved = job.queue_name != left
        if moved and job.queue:
            job.queue = {**job.queue, "position": (view.queue or {}).get("position"), "total": (view.queue or {}).get("total")}
        if moved or was_queued != now_queued or (now_queued and (since != view.queued_since or (job.queue or {}).get("position") is None)):
            self.session.flush()
            self._recompute_queue(job.queue_name)
            if moved:
                self._recompute_queue(left)  # the queue it left: the jobs behind it move up

    def _recompute_queue(self, queue_name: str) -> None:
        """Positions among the queued jobs of one queue, in the order they entered it."""
        rows = self.session.scalars(
            select(Job).where(Job.queue_name == queue_name, Job.state == State.QUEUED.value).order_by(Job.queued_since, Job.id)
        ).all()
        total = len(rows)
        for position, job in enumerate(rows, start=1):
            reported = (job.fold or {}).get("queue") or {}
            shown = dict(job.queue or {})
            new_pos = reported.get("position") if reported.get("position") is not None else position
            new_total = reported.get("total") if reported.get("total") is not None else total
            if shown.get("position") != new_pos or shown.get("total") is None:
                self._touch(job)
                shown.update(position=new_pos, total=new_total, name=shown.get("name") or reported.get("name") or queue_name)
                job.queue = shown

    def _touch(self, job: Job) -> None:
        self._held[job.id] = job
        if job.id not in self._touched:
            self._touched[job.id] = job
            self._before.setdefault(job.id, _public(job))

    # -- lookups and locks ------------------------------------------------------------------------

    def version_of(self, job_id: str | None) -> int | None:
        """The job's version as this transaction sees it."""
        if not job_id:
            return None
        job = self._known(job_id)
        return job.version if job is not None else None

    def _known(self, job_id: str) -> Any:
        """The job as this transaction has it: the hot path's row, the ORM's, or the table's."""
        return self._raw_jobs.get(job_id) or self._held.get(job_id) or self.session.get(Job, job_id)

    def lock_job(self, job_id: str) -> Job:
        """The job, locked for this transaction; NotFound if there is none."""
        self._catch_up()
        return self._lock_job(job_id, queue_lock=False)

    def _lock_job(self, job_id: str, *, queue_lock: bool, seen: Any = None) -> Job:
        """The job's row, locked for this transaction. Writers that may move a job into or out
        of a queue first take that queue's lock, so position recomputation never interleaves.

        ``seen``: the job's (queue_name, state) as read earlier in this transaction, if any."""
        locked: str | None = None
        if self.postgres:
            row = seen if seen is not None else self.session.execute(_QUEUE_OF_JOB, {"job_id": job_id}).first()
            if row is not None and (queue_lock or row.state in hotpath.QUEUE_STATES):
                locked = self._queue_lock(row.queue_name)
        job = self.session.scalars(_LOCK_JOB, {"job_id": job_id}).first()
        if job is None:
            raise NotFound("no such job", code="job_not_found")
        self._held[job.id] = job
        if self.postgres and locked != job.queue_name and job.state in hotpath.QUEUE_STATES:
            # the job entered a queue between the unlocked read and the row lock: take that
            # queue's lock now (a deadlock this may cause is detected and retried by Store.write)
            self._queue_lock(job.queue_name)
        return job

    def _queue_lock(self, queue_name: str) -> str:
        self.session.execute(_QUEUE_LOCK, {"k": "gateway.queue:" + queue_name})
        return queue_name

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

    def _insert_ignore(self, model: type, values: dict[str, Any], *, conflict: tuple[str, ...]) -> int | None:
        dialect = postgresql if self.postgres else sqlite
        stmt = dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=list(conflict)).returning(model.id)  # type: ignore[attr-defined]
        return self.session.execute(stmt).scalar()


# -- conversions between rows and the pure fold ----------------------------------------------------




def _fold_event(source: str, pe: ProviderEvent, kind: Kind) -> states.Event:
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


def _progress_only(before: tuple[Any, ...] | None, after: tuple[Any, ...]) -> bool:
    """Only the progress moved: the relay may coalesce it (relay/coalesce.py)."""
    return bool(before) and before[:3] == after[:3] and before[4:] == after[4:]  # type: ignore[index]


def _public(job: Job) -> tuple[Any, ...]:
    queue_pos = (job.queue or {}).get("position") if job.state == State.QUEUED.value else None
    return (job.state, job.attempt, job.label, job.progress, job.error, job.result, queue_pos)


def _queue_name(queue: dict[str, Any] | None) -> str | None:
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


def view_of(job: Job) -> states.JobView:
    """The fold state stored in a job row."""
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


def event_of(row: Event) -> states.Event:
    """A stored event as the fold sees it."""
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


def random_token(nbytes: int = 16) -> str:
    return pysecrets.token_urlsafe(nbytes)
