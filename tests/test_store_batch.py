"""Group commit (gateway/store/batch.py) on real PostgreSQL and SQLite, with real threads.

Each test forms its batches for certain: a leader's transaction is held open until the callers
behind it have queued, so they commit as one batch when it ends. The promises: every caller is
answered only after the commit holding its rows, with its own result and changes; one caller's
failure reaches only that caller while its neighbours commit; two events of one job in a batch
fold as if sent one after another; concurrent batches on PostgreSQL never deadlock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from adapters.base import ProviderEvent
from gateway.db import make_engine
from gateway.errors import Conflict
from gateway.models import Event
from gateway.states import State
from gateway.store import Store, Writer
from gateway.store.batch import GroupCommit
from tests.test_store import normalized, register

BASE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
Call = tuple[Callable[[Writer], Any], list[tuple[str, str, bool]]]


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    yield Store(engine, group_window_ms=1)
    engine.dispose()


def own_queue(store: Store) -> str:
    """A registered job alone in its queue: what one caller changes is that job only."""
    return register(store, queue="q-" + uuid.uuid4().hex[:10])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def event(ext: str, n: int, state: State | None, event_id: str | None = None, **fields: Any) -> ProviderEvent:
    return ProviderEvent(event_id=event_id or f"{ext}-{n}-{uuid.uuid4().hex[:6]}", external_id=ext,
                         occurred_at=BASE + timedelta(milliseconds=n), state=state, **fields)


def fields_for(state: State | None, n: int) -> dict[str, Any]:
    if state is State.PROCESSING:
        return {"progress": {"current": n, "total": 100, "step": None}}
    if state is State.FAILED:
        return {"error": {"code": f"c{n % 2}", "message": "m", "retryable": True}}
    if state is State.COMPLETE:
        return {"result": {"n": n}}
    return {}


def webhook(pe: ProviderEvent, *, then: Callable[[Writer], None] | None = None) -> Call:
    """What ingest hands the group: record the event, finish its changes; its lock keys."""

    def record(w: Writer) -> Any:
        outcome = w.record_event("worker", pe)
        w.finish_changes()
        if then is not None:
            then(w)
        return outcome, w.version_of(outcome.job_id), txid(w)

    return record, [("worker", pe.external_id, pe.state in (State.QUEUED, State.FAILED))]


def txid(w: Writer) -> Any:
    return w.conn.exec_driver_sql("SELECT txid_current()").scalar() if w.postgres else None


def run_grouped(group: GroupCommit, calls: list[Call], go: threading.Event | None = None, queued: threading.Event | None = None,
                timeout: float = 30) -> list[tuple[str, Any]]:
    """Every call through ``group`` in its own thread, ``calls`` forming one batch behind a
    leader whose transaction is held open until they have all queued (and, when given, until
    ``go`` is set; ``queued`` is set once they have). Per call: ("ok", (result, changes)) or
    ("error", exception)."""
    entered = threading.Semaphore(0)
    release = go or threading.Event()

    def held(w: Writer) -> None:
        entered.release()
        assert release.wait(timeout)

    out: list[tuple[str, Any]] = [("none", None)] * len(calls)

    def call(i: int, fn: Callable[[Writer], Any], keys: list[tuple[str, str, bool]]) -> None:
        try:
            out[i] = ("ok", group.write(fn, keys))
        except Exception as exc:
            out[i] = ("error", exc)

    leaders = [threading.Thread(target=lambda: group.write(held, [])) for _ in range(group.max_in_flight)]
    for leader in leaders:  # every transaction the group runs at once is busy: the calls queue
        leader.start()
    for _ in leaders:
        assert entered.acquire(timeout=timeout)
    threads = [threading.Thread(target=call, args=(i, fn, keys)) for i, (fn, keys) in enumerate(calls)]
    for t in threads:
        t.start()
    wait_until(lambda: group.waiting == len(calls), "the callers to queue behind the leader")
    if queued is not None:
        queued.set()
    if go is None:
        release.set()
    for t in [*leaders, *threads]:
        t.join(timeout)
        assert not t.is_alive()
    return out


def sizes_of(group: GroupCommit) -> list[int]:
    seen: list[int] = []
    group.on_batch = seen.append
    return seen


def stored(store: Store, event_id: str) -> bool:
    with store.reading() as s:
        return s.scalar(select(func.count()).select_from(Event).where(Event.event_id == event_id)) == 1


def test_callers_queued_behind_a_commit_share_one_transaction_and_get_their_own_answers(store):
    jobs = [own_queue(store) for _ in range(5)]
    pes = [event(store.get_job(j).external_id, 10 + i, State.PROCESSING, **fields_for(State.PROCESSING, i)) for i, j in enumerate(jobs)]
    sizes = sizes_of(store.group)
    out = run_grouped(store.group, [webhook(pe) for pe in pes])
    assert sorted(sizes) == [1] * store.group.max_in_flight + [5]
    assert [kind for kind, _ in out] == ["ok"] * 5
    for job_id, pe, (_, ((outcome, version, _tx), changes)) in zip(jobs, pes, out, strict=True):
        assert outcome.job_id == job_id and outcome.state_after == "processing"
        assert [(c.job_id, c.version) for c in changes] == [(job_id, version)]  # its own changes only
        assert stored(store, pe.event_id)
        assert store.get_job(job_id).version == version
    if store.postgres:
        assert len({tx for _, ((_, _, tx), _) in out}) == 1, "one transaction, one commit"
    assert store.group.fallbacks == 0


@pytest.mark.parametrize("failure", ["exception", "database"])
def test_one_bad_webhook_fails_alone_and_its_neighbours_commit(store, failure):
    if failure == "database" and not store.postgres:
        pytest.skip("SQLite stores what PostgreSQL refuses (a NUL character)")
    jobs = [own_queue(store) for _ in range(4)]
    exts = [store.get_job(j).external_id for j in jobs]
    good = [event(ext, 20 + i, State.PROCESSING, **fields_for(State.PROCESSING, i)) for i, ext in enumerate(exts)]

    def refuse(w: Writer) -> None:
        raise Conflict("this one is refused", code="refused")

    if failure == "exception":  # its event is written, then it raises: nothing of it may stay
        bad_pe = event(exts[1], 99, State.COMPLETE)
        bad = webhook(bad_pe, then=refuse)
    else:  # PostgreSQL refuses the row itself
        bad_pe = event(exts[1], 99, State.COMPLETE, type="nul\x00")
        bad = webhook(bad_pe)
    calls = [webhook(good[0]), bad, webhook(good[2]), webhook(good[3])]
    sizes = sizes_of(store.group)
    out = run_grouped(store.group, calls)
    assert sorted(sizes) == [1] * store.group.max_in_flight + [4]
    kind, error = out[1]
    assert kind == "error"
    assert type(error).__name__ == ("Conflict" if failure == "exception" else "DataError")
    assert not stored(store, bad_pe.event_id)
    assert store.get_job(jobs[1]).state == "queued"  # as registered: nothing of the bad one stayed
    for i in (0, 2, 3):
        assert out[i][0] == "ok", out[i]
        assert stored(store, good[i].event_id)
        assert store.get_job(jobs[i]).state == "processing"
    if store.postgres:
        assert len({out[i][1][0][2] for i in (0, 2, 3)}) == 1, "the neighbours still shared one commit"
    assert store.group.fallbacks == 0


HISTORY_EVENT = st.tuples(st.sampled_from([State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED, None]), st.integers(0, 40))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(HISTORY_EVENT, min_size=2, max_size=6))
def test_the_same_job_several_times_in_one_batch_folds_as_if_sent_one_after_another(store, history):
    """A batch of one job's events (late ones included) against the same events sent one by one
    to a twin job: the same decisions, versions and job."""
    batched, sequential = own_queue(store), own_queue(store)
    outcomes = {}
    for job_id in (batched, sequential):
        ext = store.get_job(job_id).external_id
        pes = [event(ext, ms, state, event_id=f"{ext}-{i}", **fields_for(state, ms)) for i, (state, ms) in enumerate(history)]
        if job_id == batched:
            out = run_grouped(store.group, [webhook(pe) for pe in pes])
            assert all(kind == "ok" for kind, _ in out), out
            results = [r for _, r in out]
        else:
            results = [store.write(webhook(pe)[0]) for pe in pes]
        outcomes[job_id] = [(o.decision, o.state_before, o.state_after, v, [c.version for c in ch]) for (o, v, _), ch in results]
    assert outcomes[batched] == outcomes[sequential]
    assert normalized(store, batched) == normalized(store, sequential)
    assert store.get_job(batched).version == store.get_job(sequential).version


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([State.PROCESSING, State.FAILED, State.QUEUED, State.COMPLETE])),
                         min_size=2, max_size=6), min_size=2, max_size=3))
def test_concurrent_batches_on_postgres_never_deadlock(pg_url, batches):
    """Several workers' batches over the same jobs (two queues, events that queue and fail
    them, any order) committed at once: no caller fails, no batch falls back to one-by-one
    (what a deadlock would cause), and every job is the fold of its events."""
    stores = [Store(make_engine(pg_url, pool_size=6, max_overflow=0), group_window_ms=1) for _ in batches]
    try:
        main = stores[0]
        jobs = [register(main, queue=f"q{i % 2}-{uuid.uuid4().hex[:6]}") for i in range(4)]
        exts = [main.get_job(j).external_id for j in jobs]
        per_worker = [[event(exts[j], 1000 * w + k, state, **fields_for(state, k)) for k, (j, state) in enumerate(batch)]
                      for w, batch in enumerate(batches)]
        go, queued = threading.Event(), [threading.Event() for _ in batches]
        results: list[list[tuple[str, Any]]] = [[] for _ in batches]

        def worker(i: int) -> None:
            results[i] = run_grouped(stores[i].group, [webhook(pe) for pe in per_worker[i]], go=go, queued=queued[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for q in queued:
            assert q.wait(30)
        go.set()  # every worker's batch starts at once
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        for i, out in enumerate(results):
            assert [kind for kind, _ in out] == ["ok"] * len(per_worker[i]), out
        assert all(s.group.fallbacks == 0 for s in stores)
        # every job as the events stored for it fold: replayed one by one on a twin
        for job_id, ext in zip(jobs, exts, strict=True):
            twin = own_queue(main)
            twin_ext = main.get_job(twin).external_id
            for pes in per_worker:
                for pe in pes:
                    if pe.external_id == ext:
                        main.write(webhook(ProviderEvent(**{**pe.__dict__, "external_id": twin_ext, "event_id": "twin-" + pe.event_id}))[0])
            assert normalized(main, job_id) == normalized(main, twin)
    finally:
        for s in stores:
            s.engine.dispose()


def test_a_batch_takes_its_queue_and_row_locks_before_its_webhooks_run(pg_url):
    """The batch's first script takes every lock its webhooks will take: the queues of its
    queued jobs and all its jobs' rows. Another transaction can take none of them until the
    batch has ended, so the batch never waits for one half-way through."""
    store = Store(make_engine(pg_url), group_window_ms=1)
    try:
        jobs = sorted(own_queue(store) for _ in range(3))  # registered: queued, each in its queue
        queues = [store.get_job(j).queue_name for j in jobs]
        keys = [("worker", store.get_job(j).external_id, False) for j in reversed(jobs)]
        with store.transaction() as w:
            w.lock_batch(keys)
            with store.engine.connect() as other:
                for job_id, queue in zip(jobs, queues, strict=True):
                    with other.begin():
                        free = other.execute(text("SELECT pg_try_advisory_xact_lock(hashtext('gateway.queue:' || :q))"), {"q": queue}).scalar()
                        assert free is False, f"queue {queue} not locked"
                    with pytest.raises(OperationalError, match="lock timeout"), other.begin():
                        other.exec_driver_sql("SET LOCAL lock_timeout = '50ms'")
                        other.execute(text("SELECT id FROM jobs WHERE id = :id FOR NO KEY UPDATE"), {"id": job_id})
    finally:
        store.engine.dispose()


def test_each_version_of_a_job_changed_twice_in_a_batch_is_forwarded_as_it_was(db_url, tmp_path):
    """Forwarded messages are owed as each webhook's changes are collected: the message of the
    version a failure made says job.failed and carries that version, though the next webhook
    of the same batch moved the job on before the commit."""
    from tests.gwapp import gw_of, make_app
    from tests.test_forward_owed import ENDPOINT_SECRET, ENDPOINTS, forwarded

    app = make_app(db_url, tmp_path, ENDPOINTS, "ingest_batch_window_ms = 1", BACKEND_SECRET=ENDPOINT_SECRET)
    store = gw_of(app).store
    job_id = own_queue(store)
    ext = store.get_job(job_id).external_id
    history = [(State.PROCESSING, 1), (State.FAILED, 2), (State.PROCESSING, 3)]
    out = run_grouped(store.group, [webhook(event(ext, ms, state, **fields_for(state, ms))) for state, ms in history])
    assert [kind for kind, _ in out] == ["ok"] * 3
    versions = [result[1] for _, (result, _changes) in out]
    backend = [r for r in forwarded(app, job_id) if r[0] == "backend"]
    assert [(r[1], r[2]) for r in backend[-3:]] == list(zip(["job.processing", "job.failed", "job.processing"], versions, strict=True))
    from gateway.models import OutboxItem
    with store.reading() as session:
        payloads = session.scalars(select(OutboxItem.payload).where(OutboxItem.job_id == job_id, OutboxItem.target == "backend").order_by(OutboxItem.id)).all()
    assert [(p["data"]["state"], p["data"]["version"]) for p in payloads[-3:]] == [("processing", versions[0]), ("failed", versions[1]), ("processing", versions[2])]
