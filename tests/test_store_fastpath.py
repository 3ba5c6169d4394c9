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
