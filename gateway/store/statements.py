"""The SQL of the write paths, each statement written once from the SQLAlchemy tables.

The ORM path (writer.py, queues.py, unit.py) executes these statements through SQLAlchemy; the
PostgreSQL fast path (fastpath.py) sends the same statements, compiled for psycopg, inside its
scripts. A rule about storage (how an event is deduplicated, how a job row is locked, which
queue lock a job takes, which columns an UPDATE writes) therefore lives here and nowhere else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import Boolean, ColumnElement, Insert, Select, Table, Text, Update, bindparam, case, func, literal_column, select, true, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, psycopg
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from gateway.models import Delivery, Event, Job, JobKey, TraceEntry
from gateway.states import State

S = TypeVar("S", bound=Select[Any])
JOBS, JOB_KEYS, EVENTS = cast(Table, Job.__table__), cast(Table, JobKey.__table__), cast(Table, Event.__table__)
DELIVERIES, TRACE = cast(Table, Delivery.__table__), cast(Table, TraceEntry.__table__)

#: a job in one of these states is in a queue's positions, or may be put back in one by a retry
#: (CONTRACT §1): writers that change such a job take its queue's lock first (queues.py)
QUEUE_STATES = (State.QUEUED.value, State.FAILED.value)
QUEUE_LOCK_PREFIX = "gateway.queue:"

EVENT_COLUMNS = ("source", "event_id", "external_id", "kind", "type", "state", "occurred_at", "received_at", "data", "digest")
DELIVERY_COLUMNS = tuple(c.name for c in DELIVERIES.columns if c.name != "id")
#: the job columns a fold writes (rows.job_columns) and the version
WRITTEN_COLUMNS = ("state", "attempt", "label", "progress", "queue", "error", "result", "state_changed_at", "updated_at", "queued_since", "fold", "version")


def _param(table: Table, column: str) -> Any:
    return bindparam(column, type_=table.c[column].type)


def queue_lock(queue_name: ColumnElement[Any]) -> ColumnElement[Any]:
    """A queue's transaction-scoped advisory lock (PostgreSQL), keyed by the queue's name: every
    writer that may move a job into, out of or within a queue takes it before the job's row."""
    return func.pg_advisory_xact_lock(func.hashtext(literal_column(repr(QUEUE_LOCK_PREFIX)).concat(queue_name)))


LOCK_QUEUE = select(queue_lock(bindparam("queue_name", type_=JOBS.c.queue_name.type)))


def job_of_key() -> ColumnElement[Any]:
    """The job registered for (source, external_id), as a scalar subquery."""
    return select(JOB_KEYS.c.job_id).where(JOB_KEYS.c.source == bindparam("source"), JOB_KEYS.c.external_id == bindparam("external_id")).scalar_subquery()


def locking(stmt: S) -> S:
    """A job row's lock. NO KEY UPDATE, not UPDATE: inserting an event takes KEY SHARE on its
    job's row (the foreign key), and FOR UPDATE would deadlock two writers that both inserted first."""
    return stmt.with_for_update(key_share=True)


@lru_cache(maxsize=2)
def lock_queue_if_needed(may_queue: bool) -> Select[Any]:
    """The queue lock of the job of (source, external_id), taken only when needed: the job is in
    a queue state, or the event may queue it. Answers the queue's name and whether it was locked.
    One object per ``may_queue``: ``for_psycopg`` caches its SQL by the statement object."""
    when = true() if may_queue else JOBS.c.state.in_([literal_column(repr(s)) for s in QUEUE_STATES])
    locked = case((when, sql_cast(queue_lock(JOBS.c.queue_name), Text))).is_not(None)
    return select(JOBS.c.queue_name, locked.label("locked")).where(JOBS.c.id == job_of_key())


def _batch_keys() -> Any:
    """The (source, external_id, may_queue) triples of a batch, from three array parameters."""
    arrays = [sql_cast(bindparam(name), ARRAY(kind)) for name, kind in (("sources", Text), ("external_ids", Text), ("may_queue", Boolean))]
    return func.unnest(*arrays).table_valued("source", "external_id", "may_queue").render_derived(name="batch_keys")


def _lock_batch() -> tuple[Select[Any], Select[Any]]:
    keys = _batch_keys()
    of_keys = JOB_KEYS.join(keys, (keys.c.source == JOB_KEYS.c.source) & (keys.c.external_id == JOB_KEYS.c.external_id))
    queued = JOBS.c.state.in_([literal_column(repr(s)) for s in QUEUE_STATES])
    queues = select(JOBS.c.queue_name).select_from(JOBS.join(of_keys, JOB_KEYS.c.job_id == JOBS.c.id)).where(keys.c.may_queue | queued).distinct().subquery()
    # PostgreSQL evaluates a volatile function of the select list after the ORDER BY: in name order
    lock_queues = select(queues.c.queue_name, queue_lock(queues.c.queue_name)).order_by(queues.c.queue_name)
    lock_rows = locking(select(JOBS.c.id).where(JOBS.c.id.in_(select(JOB_KEYS.c.job_id).select_from(of_keys))).order_by(JOBS.c.id))
    return lock_queues, lock_rows


#: a group commit's locks, taken before its webhooks run (gateway/store/batch.py): the queue locks
#: of its jobs (a job in a queue state, or whose event may leave it in one: queued, or failed, so
#: that the batch's next event of that job finds the lock already held) in name order, then its
#: jobs' rows in id order. Every batch takes them in this one order, and a single writer takes
#: one queue then one row, so no two writers wait for each other in a circle. Parameters:
#: ``sources``, ``external_ids``, ``may_queue`` (arrays, one entry per event).
LOCK_BATCH_QUEUES, LOCK_BATCH_ROWS = _lock_batch()


def insert_event(dialect: str, job_id: ColumnElement[Any] | None = None) -> Insert:
    """An event's INSERT unless taken: no conflict target, so a taken (source, event_id) and a
    taken (source, digest) both make a duplicate (no row returned). Files it under ``job_id``
    (default: the ``job_id`` parameter); returns its id and job."""
    dialect_module = postgresql if dialect == "postgresql" else sqlite
    values = {c: _param(EVENTS, c) for c in EVENT_COLUMNS}
    values["job_id"] = job_id if job_id is not None else _param(EVENTS, "job_id")
    stmt: Insert = dialect_module.insert(EVENTS).values(values).on_conflict_do_nothing().returning(EVENTS.c.id, EVENTS.c.job_id)
    return stmt


@lru_cache(maxsize=256)
def update_job(columns: frozenset[str]) -> Update:
    """The job row's UPDATE of the given columns only (the ones that changed), by ``job_id_``."""
    return update(JOBS).where(JOBS.c.id == bindparam("job_id_")).values({c: _param(JOBS, c) for c in sorted(columns)})


@lru_cache(maxsize=64)
def insert_delivery(columns: frozenset[str]) -> Insert:
    """A delivery's INSERT of the given columns (its non-null ones); no id asked back, so it needs
    no answer before the COMMIT."""
    return DELIVERIES.insert().values({c: _param(DELIVERIES, c) for c in sorted(columns)}).inline()


@lru_cache(maxsize=64)
def insert_delivery_returning_id(columns: frozenset[str]) -> Insert:
    """A delivery's INSERT of the given columns that answers its id: for a delivery whose id the
    transaction needs (the ``dlv_<id>`` of a forwarded delivery message, gateway/forward_delivery.py)."""
    return DELIVERIES.insert().values({c: _param(DELIVERIES, c) for c in sorted(columns)}).returning(DELIVERIES.c.id)


INSERT_TRACE = TRACE.insert().inline()

_PSYCOPG = psycopg.dialect(paramstyle="format")  # type: ignore[no-untyped-call]  # SQLAlchemy leaves the dialect constructors untyped
_PSYCOPG.bind_typing = BindTyping.NONE  # parameters are bound on the client (fastpath.py): no casts needed


@lru_cache(maxsize=512)
def for_psycopg(stmt: ClauseElement) -> tuple[str, tuple[str, ...]]:
    """``stmt`` as PostgreSQL SQL with ``%s`` placeholders for psycopg's client-side binding in
    the fast path's scripts, and the names of its parameters in placeholder order (scripts join
    statements and their parameter lists). Constants are inlined above: every parameter is named.

    Cached by the statement object (compiling costs more than the rest of a webhook's Python
    work): pass the statements of this module, each built once, never one built per call."""
    compiled = cast(SQLCompiler, stmt.compile(dialect=_PSYCOPG))
    order = tuple(compiled.positiontup or ())
    assert all(compiled.params[name] is None for name in order), f"a constant bound in {compiled}"
    return str(compiled), order
