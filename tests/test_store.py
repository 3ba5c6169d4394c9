"""The writer path on a real database: ordering and duplicates, queue positions, adoption, links."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import ProviderEvent
from gateway.db import make_engine
from gateway.jobjson import job_json
from gateway.states import Kind, State
from gateway.store import Store

FUTURE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    yield Store(engine)
    engine.dispose()


def register(store: Store, queue: str = "default", ext: str | None = None) -> str:
    with store.transaction() as w:
        job, _ = w.register("worker", ext or "ext-" + uuid.uuid4().hex[:10], None, "label", queue, who="test")
    return job.id


def send(store: Store, job_id: str, event_id: str, state: State | None, ms: int, base: datetime = FUTURE, *, read: bool = False,
         **fields: Any) -> None:
    """A webhook of the job's provider, or (``read``) the same word read from its API (issue 21)."""
    job = store.get_job(job_id)
    pe = ProviderEvent(event_id=event_id, external_id=job.external_id, occurred_at=base + timedelta(milliseconds=ms), state=state, **fields)
    with store.transaction() as w:
        if read:
            w.record_event("worker", pe, kind=Kind.RECONCILE, job_id=job_id)
        else:
            w.record_event("worker", pe)


def normalized(store: Store, job_id: str) -> dict[str, Any]:
    job = store.get_job(job_id)
    data = job_json(job)
    created = data["created_at"]
    for key in ("id", "external_id", "version", "created_at"):
        data.pop(key)
    if data["queue"]:
        data["queue"].pop("name")  # each job has a queue of its own here
    return {k: ("<created>" if v == created else v) for k, v in data.items()}


EVENT = st.tuples(
    st.sampled_from([State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED, None]),
    st.integers(0, 5),
    st.integers(0, 100),
    st.booleans(),  # read from the provider's API (kind reconcile) rather than a webhook
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=1, max_size=7), st.randoms(use_true_random=False), st.lists(st.integers(0, 6), max_size=3))
def test_any_arrival_order_and_duplication_ends_in_the_same_job(store, history, rnd, dups):
    def fields(state, n):
        if state is State.PROCESSING:
            return {"progress": {"current": n, "total": 100, "step": None}}
        if state is State.FAILED:
            return {"error": {"code": f"c{n % 2}", "message": "m", "retryable": True}}
        if state is State.COMPLETE:
            return {"result": {"n": n}}
        return {}

    events = [(f"e{i:02d}", state, t * 100, read, fields(state, n)) for i, (state, t, n, read) in enumerate(history)]
    in_order = register(store, "q-" + uuid.uuid4().hex)
    for eid, state, ms, read, f in sorted(events, key=lambda e: e[2]):
        send(store, in_order, f"{in_order}-{eid}", state, ms, read=read, **f)
    shuffled = events + [events[i % len(events)] for i in dups]
    rnd.shuffle(shuffled)
    other = register(store, "q-" + uuid.uuid4().hex)
    for eid, state, ms, read, f in shuffled:
        send(store, other, f"{other}-{eid}", state, ms, read=read, **f)
    assert normalized(store, other) == normalized(store, in_order)


def test_queue_positions_move_for_the_jobs_behind(store):
    q = "q-" + uuid.uuid4().hex[:8]
    a, b, c = register(store, q), register(store, q), register(store, q)
    assert [store.get_job(j).queue["position"] for j in (a, b, c)] == [1, 2, 3]
    assert store.get_job(c).queue["total"] == 3
    version_c = store.get_job(c).version
    send(store, a, f"{a}-p", State.PROCESSING, 0)
    assert [store.get_job(j).queue["position"] for j in (b, c)] == [1, 2]
    assert store.get_job(c).version == version_c + 1
    assert store.get_job(a).queue is None


def test_reported_position_wins(store):
    q = "q-" + uuid.uuid4().hex[:8]
    a = register(store, q)
    send(store, a, f"{a}-q", State.QUEUED, 0, queue={"position": 4, "total": 12})
    assert store.get_job(a).queue == {"name": q, "position": 4, "total": 12}


def test_changes_are_reported_with_versions(store):
    seen = []

    class Recorder:
        def publish_in_transaction(self, writer, changes):
            pass

        def published(self, changes):
            seen.extend(changes)

    store.bus = Recorder()
    job = register(store, "q-" + uuid.uuid4().hex)
    send(store, job, f"{job}-1", State.PROCESSING, 0)
    send(store, job, f"{job}-1", State.PROCESSING, 0)  # duplicate: no change
    assert [(c.job_id, c.version) for c in seen] == [(job, 1), (job, 2)]


def test_link_supersedes_the_old_attempts_late_events(store):
    job = register(store)
    past = datetime.now(UTC) - timedelta(minutes=5)
    send(store, job, f"{job}-f", State.FAILED, 0, base=past, error={"code": "x"})
    with store.transaction() as w:
        w.link_attempt(job, "worker", "new-" + job, by="test")
    linked = store.get_job(job)
    assert (linked.state, linked.attempt) == ("queued", 2)
    send(store, job, f"{job}-late", State.PROCESSING, 10**8)  # old id, after the link
    assert store.get_job(job).state == "queued"
    new = ProviderEvent(event_id=f"{job}-n", external_id="new-" + job, occurred_at=FUTURE + timedelta(days=2), state=State.PROCESSING)
    with store.transaction() as w:
        w.record_event("worker", new)
    assert (store.get_job(job).state, store.get_job(job).attempt) == ("processing", 2)


def test_the_keys_kept_in_the_fold_are_the_job_keys_table(store):
    """The fold JSON carries the job's keys so a webhook skips the links query: after
    registration, an attempt link and events from both keys, they match the table."""
    from sqlalchemy import select

    from gateway.models import Job, JobKey
    from gateway.store import links_of

    job_id = register(store)
    send(store, job_id, "k1", State.PROCESSING, 1)
    with store.transaction() as w:
        w.lock_job(job_id)
        w.link_attempt(job_id, "worker", "second-" + job_id, by="test")
    pe = ProviderEvent(event_id="k2", external_id="second-" + job_id, occurred_at=FUTURE + timedelta(milliseconds=5), state=State.COMPLETE)
    with store.transaction() as w:
        w.record_event("worker", pe)
    with store.reading() as session:
        job = session.get(Job, job_id)
        table = session.execute(select(JobKey).where(JobKey.job_id == job_id).order_by(JobKey.id)).scalars().all()
        kept = links_of(job.fold["keys"])
    assert [(link.key, link.at, link.uid) for link in kept] == [((k.source, k.external_id), k.linked_at, f"{k.id:012d}") for k in table]
    assert len(kept) == 2 and job.state == "complete"
