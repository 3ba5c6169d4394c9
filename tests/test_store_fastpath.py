"""PostgreSQL's fast path (gateway.store.fastpath) against the ORM path it stands in for.

The property tests in test_store.py already fold every order of events on both paths; these
pin what is particular to the fast path: the row it writes is the row the ORM would write, a
second event for the same job in one transaction sees the first, errors come out as
SQLAlchemy's, and no pooled connection is ever left in autocommit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import DataError

from adapters.base import ProviderEvent
from gateway.db import make_engine
from gateway.jobjson import job_json
from gateway.states import Decision, State
from gateway.store import Store

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


@pytest.fixture
def pg(pg_url):
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def lite(sqlite_url):
    engine = make_engine(sqlite_url)
    yield Store(engine)
    engine.dispose()


def _register(store: Store, ext: str) -> str:
    with store.transaction() as w:
        job, _ = w.register("worker", ext, None, "label", "default", who="test")
    return job.id


def _event(ext: str, n: int, state: State | None, **fields) -> ProviderEvent:
    return ProviderEvent(event_id=f"{ext}-{n}", external_id=ext, occurred_at=T0 + timedelta(seconds=n), state=state, **fields)


HISTORY = [
    (State.PROCESSING, {"progress": {"current": 1, "total": 4}}),
    (State.PROCESSING, {"progress": {"current": 3, "total": 4, "step": "rows"}}),
    (None, {}),
    (State.FAILED, {"error": {"code": "boom", "message": "it broke"}}),
    (State.PROCESSING, {"progress": {"current": 1, "total": 4}}),  # the provider's re-run: attempt 2
    (State.COMPLETE, {"result": {"url": "https://example.test/r"}}),
]


def test_the_hot_path_writes_the_row_the_orm_path_writes(pg, lite):
    """The same history on PostgreSQL (fast path) and SQLite (ORM path) gives the same job."""
    seen = {}
    for name, store in (("pg", pg), ("lite", lite)):
        ext = "hot-" + uuid.uuid4().hex[:10]
        job_id = _register(store, ext)
        decisions = []
        for n, (state, fields) in enumerate(HISTORY, start=1):
            with store.transaction() as w:
                decisions.append(w.record_event("worker", _event(ext, n, state, **fields)).decision)
        data = job_json(store.get_job(job_id))
        for key in ("id", "external_id", "created_at", "updated_at", "state_changed_at"):
            data.pop(key)
        seen[name] = (decisions, data)
    assert seen["pg"] == seen["lite"]
    decisions, data = seen["pg"]
    assert decisions == [Decision.APPLIED, Decision.APPLIED, Decision.IGNORED, Decision.APPLIED, Decision.APPLIED, Decision.APPLIED]
    assert data["state"] == "complete" and data["attempt"] == 2 and data["version"] == 6


def test_two_events_of_one_job_in_one_transaction(pg):
    """The second event reads the job the first one left, not the row before the transaction."""
    ext = "two-" + uuid.uuid4().hex[:10]
    job_id = _register(pg, ext)
    with pg.transaction() as w:  # queued -> processing: the ORM path (the job leaves a queue)
        w.record_event("worker", _event(ext, 1, State.PROCESSING))
    v = pg.get_job(job_id).version
    with pg.transaction() as w:  # as ingest records a body holding several events
        first = w.record_event("worker", _event(ext, 2, State.PROCESSING, progress={"current": 1, "total": 2}))
        w.finish_changes()
        second = w.record_event("worker", _event(ext, 3, State.COMPLETE))
        w.finish_changes()
        assert w.version_of(job_id) == v + 2
    assert (first.state_before, first.state_after) == ("processing", "processing")
    assert (second.state_before, second.state_after) == ("processing", "complete")
    job = pg.get_job(job_id)
    assert (job.state, job.version, job.progress, job.result) == ("complete", v + 2, None, None)
    assert [(c.job_id, c.version, c.progress_only) for c in w.changes] == [(job_id, v + 1, True), (job_id, v + 2, False)]


def test_an_unstorable_value_is_sqlalchemys_data_error_and_the_connection_recovers(pg):
    ext = "nul-" + uuid.uuid4().hex[:10]
    job_id = _register(pg, ext)
    with pg.transaction() as w:
        w.record_event("worker", _event(ext, 1, State.PROCESSING))
    with pytest.raises(DataError), pg.transaction() as w:
        w.record_event("worker", _event(ext, 2, State.PROCESSING, label="nul\x00here"))
    # the one pooled connection is usable, in a transaction of its own, and not in autocommit
    with pg.engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False
    with pg.transaction() as w:
        assert w.record_event("worker", _event(ext, 3, State.PROCESSING, progress={"current": 1})).decision is Decision.APPLIED
    assert pg.get_job(job_id).progress == {"current": 1}


def test_a_rolled_back_hot_path_transaction_leaves_nothing(pg):
    """The script's own BEGIN still makes one transaction: an error after it undoes the event."""
    ext = "rb-" + uuid.uuid4().hex[:10]
    job_id = _register(pg, ext)
    with pg.transaction() as w:
        w.record_event("worker", _event(ext, 1, State.PROCESSING))
    before = pg.get_job(job_id).version
    with pytest.raises(RuntimeError), pg.transaction() as w:
        w.record_event("worker", _event(ext, 2, State.COMPLETE))
        raise RuntimeError("the handler failed after the event")
    job = pg.get_job(job_id)
    assert (job.state, job.version) == ("processing", before)
    with pg.transaction() as w:  # the same event again is new, not a duplicate
        assert w.record_event("worker", _event(ext, 2, State.COMPLETE)).decision is Decision.APPLIED
    with pg.engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False


def test_the_fast_path_compiles_each_statement_once(pg):
    """Compiling a statement costs more than the rest of a webhook's Python work: once every
    kind of write has been seen, more webhooks compile nothing (a statement built per call
    would miss ``for_psycopg``'s cache every time: half the worker's CPU per webhook)."""
    from gateway.store import statements as sql

    def history() -> None:
        ext = "compile-" + uuid.uuid4().hex[:10]
        _register(pg, ext)
        for n, (state, fields) in enumerate(HISTORY, start=1):
            with pg.transaction() as w:
                w.record_event("worker", _event(ext, n, state, **fields))

    history()
    misses = sql.for_psycopg.cache_info().misses
    for _ in range(3):
        history()
    assert sql.for_psycopg.cache_info().misses == misses


def _prepared_on_server(store: Store) -> dict[str, int]:
    """The gateway's statements prepared on the pool's one connection: name -> times run."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements WHERE name LIKE 'gw\\_%%'").all()
        conn.rollback()
    return {name: runs for name, runs in rows}


def test_the_fast_path_runs_prepared_statements_prepared_once_per_connection(pg):
    """The scripts EXECUTE statements the connection PREPAREd the first time it needed them:
    the server neither parses nor plans them per webhook. Rollbacks (an error, a read-only
    transaction's reset) do not take them away, and nothing prepares them twice."""
    ext = "prep-" + uuid.uuid4().hex[:10]
    job_id = _register(pg, ext)
    for n in range(1, 4):
        with pg.transaction() as w:
            w.record_event("worker", _event(ext, n, State.PROCESSING, progress={"current": n}))
    first = _prepared_on_server(pg)
    assert len(first) >= 4  # queue lock, event insert, row lock, job update, delivery, notify
    with pytest.raises(RuntimeError), pg.transaction() as w:
        w.record_event("worker", _event(ext, 4, State.PROCESSING, progress={"current": 4}))
        raise RuntimeError("rolled back")
    for _ in range(6):  # ORM statements run often enough for psycopg to prepare its own (5 runs):
        _register(pg, "other-" + uuid.uuid4().hex[:10])  # it would then DEALLOCATE ALL on a rollback
    pg.get_job(job_id)  # a read-only transaction, reset by a rollback on return to the pool
    for n in range(5, 25):
        with pg.transaction() as w:
            assert w.record_event("worker", _event(ext, n, State.PROCESSING, progress={"current": n})).decision is Decision.APPLIED
    later = _prepared_on_server(pg)
    assert set(later) == set(first)
    assert sum(later.values()) - sum(first.values()) >= 3 * 21  # every webhook's script 1 ran them
    assert pg.get_job(job_id).progress == {"current": 24}


def test_statements_travel_as_text_when_preparing_is_off(pg_url):
    """``prepare_statements = false`` (a transaction-pooling PgBouncer): nothing is prepared."""
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    store = Store(engine, prepare_statements=False)
    try:
        ext = "text-" + uuid.uuid4().hex[:10]
        job_id = _register(store, ext)
        for n in range(1, 4):
            with store.transaction() as w:
                w.record_event("worker", _event(ext, n, State.PROCESSING, progress={"current": n}))
        assert _prepared_on_server(store) == {}
        assert store.get_job(job_id).progress == {"current": 3}
    finally:
        engine.dispose()


def test_a_session_that_lost_its_prepared_statements_prepares_them_again(pg):
    """Something ran DEALLOCATE ALL on the connection (a pooler's reset, an operator): the
    webhook's transaction is run again, prepares again, and is applied once."""
    ext = "lost-" + uuid.uuid4().hex[:10]
    job_id = _register(pg, ext)
    pg.write(lambda w: w.record_event("worker", _event(ext, 1, State.PROCESSING, progress={"current": 1})))
    assert _prepared_on_server(pg)
    with pg.engine.connect() as conn:
        conn.exec_driver_sql("DEALLOCATE ALL")
        conn.commit()
    outcome, _ = pg.write(lambda w: w.record_event("worker", _event(ext, 2, State.PROCESSING, progress={"current": 2})))
    assert outcome.decision is Decision.APPLIED
    assert _prepared_on_server(pg)
    assert pg.get_job(job_id).progress == {"current": 2}
