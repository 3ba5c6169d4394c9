"""One transaction's unit of work: the changed jobs and their new versions, the trace lines and
deliveries it will write, and its closing writes — on PostgreSQL one script with the COMMIT.

``Writer`` (writer.py) builds on it with the operations that change jobs; buses (gateway.relay)
add their notice to it (``closing_sql``, ``session``) inside the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Table, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from gateway.ids import utcnow
from gateway.jobjson import job_text
from gateway.models import Job, TraceEntry
from gateway.states import Decision
from gateway.store import fastpath
from gateway.store import statements as sql
from gateway.store.rows import progress_only, public, unversioned


@dataclass(frozen=True)
class Change:
    """A job whose JSON changed, and its new version: what watchers are told.

    ``same_version``: the JSON moved without a new version (``updated_at``, ``queue.total``):
    no watcher is told, but a poll answered from memory must not show the old JSON (relay/fresh.py).
    ``snapshot``: the job's JSON at ``version`` as a poll answers it (``jobjson.job_text``), on the
    transaction's last change of each job, for buses that can carry it."""

    job_id: str
    version: int
    progress_only: bool = False  # only the progress moved: the relay may coalesce it (relay/coalesce.py)
    state_changed: bool = True  # the state differs from the previous version's (forwarding: job.<state>)
    same_version: bool = False
    snapshot: str | None = field(default=None, compare=False, repr=False)


def _delivery_row(values: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(sql.DELIVERY_COLUMNS)
    row.update(size=0, received_at=utcnow())
    row.update(values)
    return row


class Bus(Protocol):
    """Carries changes to watchers in every process; see gateway.relay."""

    def publish_in_transaction(self, unit: Unit, changes: Sequence[Change]) -> None: ...

    def published(self, changes: Sequence[Change]) -> None: ...


class NullBus:
    """No watchers to tell (the CLI, the store's own tests)."""

    def publish_in_transaction(self, unit: Unit, changes: Sequence[Change]) -> None:
        pass

    def published(self, changes: Sequence[Change]) -> None:
        pass


class RetryTransaction(Exception):
    """Another transaction changed what this one read between two statements: run it again."""


# deadlock detected, serialization failure, a prepared statement gone from the session (fastpath.py)
TRANSIENT_SQLSTATES = {"40P01", "40001", "26000"}


def is_transient(exc: BaseException) -> bool:
    """Whether running the same transaction again may succeed: a transient conflict (deadlock,
    serialization failure, ``RetryTransaction``) or a pooled connection found dead."""
    if isinstance(exc, RetryTransaction):
        return True
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES or bool(exc.connection_invalidated)
    return False


class Unit:
    """What one transaction has changed and still has to write."""

    def __init__(self, conn: Connection, sessions: sessionmaker[Session], postgres: bool, *, prepare: bool = True):
        self.conn = conn
        self._prepare = prepare  # PostgreSQL: the fast path's statements prepared per connection (fastpath.Link)
        self._link: fastpath.Link | None = None
        self._sessions = sessions
        self._session: Session | None = None
        self.postgres = postgres
        self.changes: list[Change] = []
        self.moved: list[Change] = []  # jobs whose JSON moved without a new version (same_version)
        self._before: dict[str, tuple[Any, ...]] = {}
        self._unversioned: dict[str, tuple[Any, ...]] = {}
        self._touched: dict[str, Job] = {}
        self._traces: list[TraceEntry] = []  # stamped with the job's version by finish_changes
        self._rows: list[tuple[Table, dict[str, Any]]] = []  # (table, values): inserted with the closing writes
        self._raw_jobs: dict[str, Any] = {}  # rows changed on the fast path (fastpath.py), not yet written
        self._raw: Any = None  # the psycopg connection, once asked for
        self._closing_sql: list[fastpath.Statement] = []  # PostgreSQL: run in one script with the COMMIT
        self._adopted: dict[str, Decision] = {}  # each adopted event's decision, from the last re-fold on adoption
        # every job row this transaction loaded: the session's identity map holds rows weakly,
        # and reading one again (version_of, traces) must not cost another SELECT
        self._held: dict[str, Job] = {}
        self.committed: list[Callable[[], None]] = []  # run after the commit (e.g. wake the outbox)
        # told each batch of new changes as finish_changes collects them, while the jobs are as
        # those versions show them (forwarded messages, gateway.forward); set by Store.transaction
        self.owing: Sequence[Callable[[Any, Sequence[Change]], None]] = ()
        self._owed = 0  # changes[:_owed] were handed to ``owing``
        self._at_close: list[Callable[[], None]] = []  # writes deferred to the close (``at_close``)

    @property
    def session(self) -> Session:
        """The ORM session, joined to this transaction's connection, opened on first use: the
        fast path needs none (fastpath.py), and a session costs more than the SQL it saves."""
        if self._session is None:
            self._session = self._sessions(bind=self.conn)  # joins the transaction; never commits it
        return self._session

    def release(self) -> None:
        """After the commit or the rollback: close the session (its objects stay readable,
        detached) and hand psycopg its own transactions back."""
        if self._session is not None:
            self._session.close()
        if self._raw is not None:
            fastpath.end_own_begin(self._raw)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once this transaction has committed (never if it rolls back)."""
        if fn not in self.committed:
            self.committed.append(fn)

    # -- trace and deliveries -----------------------------------------------------------------

    def trace(self, job_id: str, what: str, detail: dict[str, Any] | None = None, *, at: datetime | None = None) -> None:
        """A line in the job's trace; it is written with the job's version once the changes are finished."""
        self._traces.append(TraceEntry(job_id=job_id, at=at or utcnow(), what=what, detail=detail))

    def add_delivery(self, **values: Any) -> None:
        """Record one HTTP delivery; written with the transaction's closing writes."""
        self._rows.append((sql.DELIVERIES, _delivery_row(values)))

    def insert_delivery(self, **values: Any) -> int:
        """Record one HTTP delivery now and answer its id (one more round trip than
        ``add_delivery``): for what this transaction must key by it, e.g. a forwarded delivery message."""
        row = _delivery_row(values)
        columns = frozenset(c for c in sql.DELIVERY_COLUMNS if row.get(c) is not None)
        return int(self.conn.execute(sql.insert_delivery_returning_id(columns), row).scalar_one())

    # -- versions ---------------------------------------------------------------------------------

    def _touch(self, job: Job) -> None:
        self._held[job.id] = job
        if job.id not in self._touched:
            self._touched[job.id] = job
            self._before.setdefault(job.id, public(job))
            self._unversioned.setdefault(job.id, unversioned(job))

    def _bump(self, job: Any, before: tuple[Any, ...] | None, unversioned_before: tuple[Any, ...] | None = None) -> None:
        """The one versioning rule: a job whose JSON changed gets version + 1, and watchers a Change;
        a JSON that moved only where no version is raised is noted too (``moved``)."""
        after = public(job)
        if after != before:
            job.version += 1
            self.changes.append(Change(job.id, job.version, progress_only(before, after), not before or before[0] != after[0]))
        elif unversioned_before is not None and unversioned(job) != unversioned_before:
            self.moved.append(Change(job.id, job.version, state_changed=False, same_version=True))

    @property
    def notices(self) -> list[Change]:
        """What the bus carries for this transaction: its changes, then the jobs that moved
        without a new version (none of which also changed: their snapshot covers it)."""
        if not self.moved:
            return self.changes
        changed = {c.job_id for c in self.changes}
        return self.changes + [m for m in self.moved if m.job_id not in changed]

    def _encode_snapshots(self) -> None:
        """Each changed job's JSON, encoded once, on the transaction's last change of the job (its
        final state: the rows hold it now, and the commit writes exactly that)."""
        last = {c.job_id: i for i, c in enumerate(self.changes)}
        for job_id, i in last.items():
            job = self._known(job_id)
            if job is not None:
                self.changes[i] = replace(self.changes[i], snapshot=job_text(job))

    def finish_changes(self) -> None:
        """Raise each touched job's version once if its JSON changed, and collect the changes.

        Compared in memory, so each job gets one UPDATE with its new version."""
        for job_id, job in self._touched.items():
            self._bump(job, self._before.get(job_id), self._unversioned.get(job_id))
        self._touched.clear()
        self._before.clear()
        self._unversioned.clear()
        for entry in self._traces:
            job = self._known(entry.job_id)
            detail = entry.detail or {}
            if job is not None and "version" not in detail:
                detail = {**detail, "version": job.version}
            self._rows.append((sql.TRACE, {"job_id": entry.job_id, "at": entry.at, "what": entry.what, "detail": detail or None}))
        self._traces.clear()
        new, self._owed = self.changes[self._owed:], len(self.changes)
        if new:
            for owe in self.owing:  # now, not at the close: a later event may change the job again
                owe(self, new)

    def at_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in this transaction at its close, after everything its operations wrote:
        rows whose content is fixed now but whose place (their id order) must follow this
        transaction's other rows, e.g. a job's messages after the delivery that caused them."""
        self._at_close.append(fn)

    def version_of(self, job_id: str | None) -> int | None:
        """The job's version as this transaction sees it."""
        if not job_id:
            return None
        job = self._known(job_id)
        return job.version if job is not None else None

    def _known(self, job_id: str) -> Any:
        """The job as this transaction has it: the fast path's row, the ORM's, or the table's."""
        return self._raw_jobs.get(job_id) or self._held.get(job_id) or self.session.get(Job, job_id)

    # -- the closing writes ------------------------------------------------------------------------

    def close(self, bus: Bus) -> None:
        """The transaction's closing writes, then (on PostgreSQL) its COMMIT.

        Changed job rows become plain UPDATEs of the columns that changed (the session is told
        they are written), deliveries and trace lines plain INSERTs; the bus adds its notice.
        On PostgreSQL the fast path's rows, the deliveries, NOTIFY and COMMIT go to the server as
        one script in one round trip (fastpath.py); the session's own commit then finds
        nothing left to do."""
        self.finish_changes()
        deferred, self._at_close = self._at_close, []
        for fn in deferred:
            fn()
        if self.changes:
            self._encode_snapshots()
        conn = self.conn
        for job in self._held.values():
            state = inspect(job)
            changed = {a.key: a.value for a in state.attrs if a.history.has_changes()} if state.persistent else None
            if changed:
                conn.execute(sql.update_job(frozenset(changed)), {"job_id_": job.id, **changed})
                for key, value in changed.items():
                    set_committed_value(job, key, value)
        if self._session is not None:
            self._session.flush()  # anything else the ORM holds (outbox rows)
        rows, self._rows = self._rows, []
        for table, values in rows:
            if self.postgres and table is sql.DELIVERIES:
                self.closing_sql(*fastpath.insert_delivery(values))
            else:
                self._insert(table, values)
        for job in self._raw_jobs.values():
            if update := fastpath.update_job(job):
                self.closing_sql(*update)
        self._raw_jobs.clear()
        if notices := self.notices:
            bus.publish_in_transaction(self, notices)
        if self.postgres:
            with fastpath.driver_errors(self.conn):
                fastpath.run_and_commit(self.fast(), self._closing_sql)

    def closing_sql(self, text: str, params: Sequence[Any]) -> None:
        """PostgreSQL: a statement (``%s`` placeholders) to run with the COMMIT, in its round trip."""
        self._closing_sql.append((text, params))

    def _insert_rows(self) -> None:
        rows, self._rows = self._rows, []
        for table, values in rows:
            self._insert(table, values)

    def _insert(self, table: Table, values: dict[str, Any]) -> None:
        if table is sql.DELIVERIES:
            self.conn.execute(sql.insert_delivery(frozenset(c for c in sql.DELIVERY_COLUMNS if values.get(c) is not None)), values)
        else:
            self.conn.execute(sql.INSERT_TRACE, values)

    def _catch_up(self) -> None:
        """Write the fast path's rows now: what follows reads the jobs from the database."""
        if self._raw_jobs:
            with fastpath.driver_errors(self.conn):
                fastpath.run(self.fast(), [u for job in self._raw_jobs.values() if (u := fastpath.update_job(job))])
            self._raw_jobs.clear()

    def _driver_connection(self) -> Any:
        """The psycopg connection under this transaction's session."""
        if self._raw is None:
            self._raw = self.conn.connection.driver_connection
        return self._raw

    def fast(self) -> fastpath.Link:
        """The psycopg connection with the statements prepared on its server session, which the
        pool keeps with the connection (``info`` is cleared when the connection is replaced;
        the backend's pid is checked too, so a set never outlives its session)."""
        if self._link is None:
            raw = self._driver_connection()
            prepared: set[str] | None = None
            if self._prepare:
                pid = raw.info.backend_pid
                kept = self.conn.connection.info.get("gateway_prepared")
                if kept is None or kept[0] != pid:
                    kept = self.conn.connection.info["gateway_prepared"] = (pid, set())
                prepared = kept[1]
            self._link = fastpath.Link(raw, prepared)
        return self._link
