"""The writer's common case on PostgreSQL: a known job's webhook in two round trips of psycopg.

Most webhooks move a job that is registered and not queued: a progress report, or processing
turning complete or failed. For those ``Writer.record_event`` (store.py) leaves the ORM aside:

1. one script: BEGIN; take the job's queue lock when the job is queued or failed or the event may
   queue it; insert the event unless (source, event id) or (source, digest) is taken; lock the job's row, read it;
2. the fold of the one new event (gateway.states, pure) in Python;
3. one more script: the row's UPDATE, the delivery, NOTIFY and COMMIT (``Writer.close``).

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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from psycopg import ClientCursor, Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Json
from sqlalchemy import JSON

from gateway.models import Delivery, Event, Job
from gateway.states import State

QUEUE_STATES = (State.QUEUED.value, State.FAILED.value)
JOB_COLUMNS = tuple(c.name for c in Job.__table__.columns)
WRITTEN_COLUMNS = ("state", "attempt", "label", "progress", "queue", "error", "result", "state_changed_at", "updated_at", "queued_since", "fold", "version")
DELIVERY_COLUMNS = tuple(c.name for c in Delivery.__table__.columns if c.name != "id")
EVENT_COLUMNS = ("source", "event_id", "external_id", "kind", "type", "state", "occurred_at", "received_at", "data", "digest")
_JSON_COLUMNS = {c.name for t in (Job.__table__, Event.__table__) for c in t.columns if isinstance(c.type, JSON)}
_DATETIME_COLUMNS = ("created_at", "updated_at", "state_changed_at", "queued_since")

_JOB_OF_KEY = "(SELECT job_id FROM job_keys WHERE source = %s AND external_id = %s)"

# The queue lock, taken only when needed; the answer says whether it was, and for which queue.
_QUEUE_LOCK_WHEN = {
    False: f"state IN ({', '.join(repr(st) for st in QUEUE_STATES)})",  # in a queue, or one a retry may put back in
    True: "true",  # the event may queue the job
}
QUEUE_LOCK_IF_NEEDED = {
    may_queue: f"""SELECT queue_name,
  (CASE WHEN {when} THEN pg_advisory_xact_lock(hashtext('gateway.queue:' || queue_name))::text END) IS NOT NULL AS locked
FROM jobs WHERE id = {_JOB_OF_KEY}"""
    for may_queue, when in _QUEUE_LOCK_WHEN.items()
}
INSERT_EVENT = f"""INSERT INTO events (job_id, {', '.join(EVENT_COLUMNS)})
VALUES ({_JOB_OF_KEY}, {', '.join(['%s'] * len(EVENT_COLUMNS))})
ON CONFLICT DO NOTHING RETURNING job_id"""  # (source, event_id) or (source, digest): as store.py
# NO KEY UPDATE, as on the ORM path: the event's foreign key takes KEY SHARE on this row
LOCK_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id = {_JOB_OF_KEY} FOR NO KEY UPDATE"
QUEUE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('gateway.queue:' || %s))"


@dataclass
class Locked:
    """What the first script found."""

    inserted: bool  # False: (source, event id) was already taken
    event_job_id: str | None  # the job the new event was filed under (None: held)
    queue_locked: str | None  # the queue whose lock this transaction now holds
    job: SimpleNamespace | None  # the job's row, locked, with aware datetimes; None: no job for the key


def insert_and_lock(conn: Connection[Any], event: dict[str, Any], *, may_queue: bool) -> Locked:
    """Script 1: the queue lock if needed, the event's insert, the job's row lock; and BEGIN,
    when the transaction has sent nothing yet."""
    key = [event["source"], event["external_id"]]
    begin = _begin_here(conn)
    with ClientCursor(conn, row_factory=dict_row) as cur:
        cur.execute(
            f"{begin}{QUEUE_LOCK_IF_NEEDED[may_queue]};\n{INSERT_EVENT};\n{LOCK_JOB}",
            [*key, *key, *_bind(EVENT_COLUMNS, event), *key],
        )
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


def lock_queue(conn: Connection[Any], queue_name: str) -> None:
    conn.execute(QUEUE_LOCK, [queue_name])


def update_job(job: SimpleNamespace) -> tuple[str, list[Any]] | None:
    """The job row's UPDATE of the columns that changed since it was read, as (sql, params)."""
    read = job.read_as
    changed = [c for c in WRITTEN_COLUMNS if getattr(job, c) != read[c]]
    job.read_as = {c: getattr(job, c) for c in WRITTEN_COLUMNS}  # written: the next UPDATE starts here
    if not changed:
        return None
    sql = f"UPDATE jobs SET {', '.join(f'{c} = %s' for c in changed)} WHERE id = %s"
    return sql, [*_bind(changed, vars(job)), job.id]


def insert_delivery(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """A delivery's INSERT of its non-null columns, as (sql, params)."""
    columns = [c for c in DELIVERY_COLUMNS if values.get(c) is not None]
    return f"INSERT INTO deliveries ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})", _bind(columns, values)


def run(conn: Connection[Any], statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Run statements as one script: one round trip."""
    if statements:
        with ClientCursor(conn) as cur:
            cur.execute(";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params])


def run_and_commit(conn: Connection[Any], statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Run statements and COMMIT as one script: the transaction's last round trip."""
    run(conn, [*statements, ("COMMIT", [])])
    end_own_begin(conn)


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
