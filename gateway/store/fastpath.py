"""The writer's common case on PostgreSQL: a known job's webhook in two round trips of psycopg.

Most webhooks move a job that is registered and not queued: a progress report, or processing
turning complete or failed. For those ``Writer.record_event`` (writer.py) leaves the ORM aside:

1. one script: BEGIN; take the job's queue lock when the job is queued or failed or the event may
   queue it; insert the event unless (source, event id) or (source, digest) is taken; lock the job's row, read it;
2. the fold of the one new event (gateway.states, pure) in Python;
3. one more script: the row's UPDATE, the delivery, NOTIFY and COMMIT (``Unit.close``).

The statements are the ORM path's own (statements.py), compiled for psycopg: only how they
travel differs, never what they do.

Each of them is prepared on the server once per connection (``PREPARE``, the first time a
connection needs it, in a round trip of its own) and the scripts send ``EXECUTE name(...)``:
PostgreSQL then neither parses nor plans them again, which halved the database's CPU per
webhook (docs/performance.md). A prepared statement belongs to its session and outlives
transactions, so which ones a connection holds is kept with the pooled connection
(``Link.prepared``). ``prepare_statements = false`` sends them as text instead, for a
transaction-pooling PgBouncer, which hands each transaction another server session.

A script is several statements sent at once with their parameters bound by psycopg on the
client (``ClientCursor``, the simple query protocol): one round trip and one wait for all of
them. Under gevent every wait costs a trip through the hub, which made separate statements,
and psycopg's pipeline mode even more so, cost several times as much CPU (docs/performance.md).
The locks are taken in the same order as on the ORM path (queue, then row). What this path
does not handle (a duplicate, an unknown key, an event older than the job's last, a job
entering or leaving a queue) continues on the ORM path in the same transaction from where it
stopped: the event is in, the locks are held.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg import ClientCursor, Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Json
from sqlalchemy import JSON, select
from sqlalchemy import Connection as SAConnection
from sqlalchemy.exc import DBAPIError

from gateway.store import statements as sql
from gateway.store.statements import EVENTS, JOBS, WRITTEN_COLUMNS

Statement = tuple[str, Sequence[Any]]  # SQL with %s placeholders, and its parameters
_JSON_COLUMNS = {c.name for t in (JOBS, EVENTS, sql.DELIVERIES) for c in t.columns if isinstance(c.type, JSON)}
_DATETIME_COLUMNS = ("created_at", "updated_at", "state_changed_at", "queued_since")
_INSERT_EVENT = sql.insert_event("postgresql", job_id=sql.job_of_key())
_LOCK_JOB = sql.locking(select(JOBS).where(JOBS.c.id == sql.job_of_key()))


@contextmanager
def driver_errors(conn: SAConnection) -> Iterator[None]:
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


@dataclass
class Link:
    """A transaction's psycopg connection, and the names of the statements prepared on it
    (kept with the pooled connection, which they outlive no longer than the server session);
    ``prepared`` is None when statements travel as text (``prepare_statements = false``)."""

    conn: Connection[Any]
    prepared: set[str] | None = None


def statement(stmt: Any, values: dict[str, Any]) -> Statement:
    """A statement of statements.py with its parameters from ``values``, ready for a script."""
    text, order = sql.for_psycopg(stmt)
    _PREPARABLE.add(text)
    return text, _bind(order, values)


def preparable(text: str) -> str:
    """Mark a statement written as text (``%s`` placeholders; SELECT, INSERT, UPDATE or DELETE)
    as one the scripts may prepare, as they do those of statements.py; returns it."""
    _PREPARABLE.add(text)
    return text


#: the texts that may be prepared: bounded by the statements (and their column variants) there are
_PREPARABLE: set[str] = set()


@lru_cache(maxsize=1024)
def _prepared_forms(text: str) -> tuple[str, str, str]:
    """(name, ``PREPARE name AS ...`` with ``$n`` parameters, ``EXECUTE name(%s, ...)``): the name
    is a digest of the text, so the same statement has the same name on every connection."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) == "%%":
            return "%"
        count += 1
        return f"${count}"

    body = re.sub(r"%%|%s", number, text)
    name = "gw_" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    execute = f"EXECUTE {name}(" + ", ".join(["%s"] * count) + ")" if count else f"EXECUTE {name}"
    return name, f"PREPARE {name} AS {body}", execute


def _script(link: Link, statements: Sequence[Statement], head: str = "") -> tuple[str, list[Any]]:
    """The one message that runs ``statements`` in order (after ``head``), and its parameters:
    each preparable statement as an EXECUTE, prepared first if this connection has not yet."""
    texts = []
    missing: dict[str, str] = {}  # name -> PREPARE
    for text, _ in statements:
        if link.prepared is None or text not in _PREPARABLE:
            texts.append(text)
            continue
        name, prepare, execute = _prepared_forms(text)
        if name not in link.prepared:
            missing[name] = prepare
        texts.append(execute)
    if missing:
        assert link.prepared is not None
        with ClientCursor(link.conn) as cur:
            cur.execute(";\n".join(missing.values()))  # no parameters: sent as written, "$1" and all
        link.prepared.update(missing)
    return head + ";\n".join(texts), [p for _, params in statements for p in params]


@dataclass
class Locked:
    """What the first script found."""

    inserted: bool  # False: (source, event id) was already taken
    event_job_id: str | None  # the job the new event was filed under (None: held)
    queue_locked: str | None  # the queue whose lock this transaction now holds
    job: SimpleNamespace | None  # the job's row, locked, with aware datetimes; None: no job for the key


@contextmanager
def _held_prepared(link: Link) -> Iterator[None]:
    """A script whose prepared statement the server no longer holds (something ran DEALLOCATE or
    DISCARD on the session): forget what this connection had prepared, so that the transaction's
    retry (unit.TRANSIENT_SQLSTATES) prepares again."""
    try:
        yield
    except psycopg.errors.InvalidSqlStatementName:
        if link.prepared is not None:
            link.prepared.clear()
        raise


def insert_and_lock(link: Link, event: dict[str, Any], *, may_queue: bool) -> Locked:
    """Script 1: the queue lock if needed, the event's insert, the job's row lock; and BEGIN,
    when the transaction has sent nothing yet."""
    script = [statement(sql.lock_queue_if_needed(may_queue), event), statement(_INSERT_EVENT, event), statement(_LOCK_JOB, event)]
    begin = _begin_here(link.conn)
    text, params = _script(link, script, begin)
    with _held_prepared(link), ClientCursor(link.conn, row_factory=dict_row) as cur:
        cur.execute(text, params)
        if begin:
            cur.nextset()
        queue_row = cur.fetchone()
        cur.nextset()
        insert_row = cur.fetchone()
        cur.nextset()
        job_row = cur.fetchone()
    return Locked(
        inserted=insert_row is not None,
        event_job_id=insert_row["job_id"] if insert_row else None,
        queue_locked=queue_row["queue_name"] if queue_row and queue_row["locked"] else None,
        job=_job_of(job_row) if job_row else None,
    )


def lock_batch(link: Link, keys: Sequence[tuple[str, str, bool]]) -> None:
    """A group commit's locks in the one order (statements.LOCK_BATCH_QUEUES, LOCK_BATCH_ROWS),
    as the transaction's first script: BEGIN, the queue locks, the row locks; one round trip."""
    values = {"sources": [k[0] for k in keys], "external_ids": [k[1] for k in keys], "may_queue": [k[2] for k in keys]}
    script = [statement(sql.LOCK_BATCH_QUEUES, values), statement(sql.LOCK_BATCH_ROWS, values)]
    begin = _begin_here(link.conn)
    text, params = _script(link, script, begin)
    with _held_prepared(link), ClientCursor(link.conn) as cur:
        cur.execute(text, params)


def lock_queue(link: Link, queue_name: str) -> None:
    """Take a queue's lock (statements.queue_lock) on the fast path's connection."""
    run(link, [statement(sql.LOCK_QUEUE, {"queue_name": queue_name})])


def update_job(job: SimpleNamespace) -> Statement | None:
    """The job row's UPDATE of the columns that changed since it was read (statements.update_job)."""
    read = job.read_as
    changed = [c for c in WRITTEN_COLUMNS if getattr(job, c) != read[c]]
    job.read_as = {c: getattr(job, c) for c in WRITTEN_COLUMNS}  # written: the next UPDATE starts here
    if not changed:
        return None
    return statement(sql.update_job(frozenset(changed)), {**vars(job), "job_id_": job.id})


def insert_delivery(values: dict[str, Any]) -> Statement:
    """A delivery's INSERT of its non-null columns (statements.insert_delivery)."""
    return statement(sql.insert_delivery(frozenset(c for c in sql.DELIVERY_COLUMNS if values.get(c) is not None)), values)


def run(link: Link, statements: Sequence[Statement]) -> None:
    """Run statements as one script: one round trip."""
    if statements:
        text, params = _script(link, statements)
        with _held_prepared(link), ClientCursor(link.conn) as cur:
            cur.execute(text, params)


def run_and_commit(link: Link, statements: Sequence[Statement]) -> None:
    """Run statements and COMMIT as one script: the transaction's last round trip."""
    run(link, [*statements, ("COMMIT", [])])
    end_own_begin(link.conn)


def _begin_here(conn: Connection[Any]) -> str:
    """psycopg opens a transaction with a BEGIN of its own, one round trip; at the start of a
    transaction the script sends it instead. psycopg is put in autocommit mode so it sends none,
    until ``end_own_begin`` (the transaction is the script's: autocommit changes nothing in it)."""
    if conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        return ""
    conn.autocommit = True
    return "BEGIN;\n"


def end_own_begin(conn: Connection[Any]) -> None:
    """Back to psycopg's own transactions once the script's has ended (committed or rolled
    back); a connection that cannot be is closed rather than handed out in autocommit."""
    if conn.autocommit and not conn.closed:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = False
        else:
            conn.close()


def _job_of(row: dict[str, Any]) -> SimpleNamespace:
    for c in _DATETIME_COLUMNS:
        row[c] = row[c].replace(tzinfo=UTC)  # stored naive UTC, as models.UTCDateTime does
    return SimpleNamespace(**row, read_as={c: row[c] for c in WRITTEN_COLUMNS})


def _bind(columns: Sequence[str], values: dict[str, Any]) -> list[Any]:
    """Parameters as models.py's column types bind them: JSON as JSON (None as JSON null, like
    SQLAlchemy's JSON type), aware datetimes as naive UTC."""
    out = []
    for c in columns:
        v = values.get(c)
        if c in _JSON_COLUMNS:
            v = Json(v)
        elif isinstance(v, datetime):
            v = v.astimezone(UTC).replace(tzinfo=None)
        out.append(v)
    return out
