"""The pruning rule as a property: thinning a complete job's events never changes the job, not
even when dropped events are delivered again later (their dedup rows are gone by then)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import states
from gateway.states import Kind, State
from gateway.support import thin

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
KEY = ("worker", "ext-1")
LINKS = [states.Link(key=KEY, at=None, uid="000000000001")]


@st.composite
def event(draw: Any, n: int) -> states.Event:
    state = draw(st.sampled_from([State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED, None]))
    kind = draw(st.sampled_from([Kind.PROVIDER, Kind.PROVIDER, Kind.PROVIDER, Kind.RETRY, Kind.WORKER]))
    if kind is Kind.RETRY:
        state = State.QUEUED
    return states.Event(
        uid=f"worker:e{n}",
        occurred_at=T0 + timedelta(milliseconds=draw(st.integers(0, 40))),
        state=state,
        kind=kind,
        key=KEY if kind is Kind.PROVIDER else None,
        progress={"current": draw(st.integers(0, 9)), "total": 10} if state is State.PROCESSING and draw(st.booleans()) else None,
        error={"code": draw(st.sampled_from(["a", "b"]))} if state is State.FAILED else None,
        result={"n": draw(st.integers(0, 3))} if state is State.COMPLETE else None,
        label=draw(st.sampled_from([None, None, None, "L1", "L2"])),
    )


@st.composite
def history(draw: Any) -> list[states.Event]:
    n = draw(st.integers(1, 14))
    return [draw(event(i)) for i in range(n)]


def shown(events: list[states.Event]) -> tuple[Any, ...]:
    view, _ = states.fold(T0, events, LINKS, "registered")
    return (*view.public(), view.state_changed_at, view.updated_at)


@settings(max_examples=400, deadline=None)
@given(events=history(), data=st.data())
def test_thinning_keeps_the_job_even_if_dropped_events_come_back(events: list[states.Event], data: Any) -> None:
    keep = thin(T0, events, LINKS, "registered")
    full = shown(events)
    if keep is None:
        return
    assert full[0] is State.COMPLETE
    assert shown(keep) == full
    dropped = [e for e in events if e not in keep]
    back = [e for e in dropped if data.draw(st.booleans())]
    assert shown(keep + back) == full


def test_only_complete_jobs_are_thinned() -> None:
    failed = [states.Event("worker:a", T0, State.PROCESSING, key=KEY), states.Event("worker:b", T0 + timedelta(seconds=1), State.FAILED, key=KEY)]
    assert thin(T0, failed, LINKS, None) is None
    progress = [states.Event(f"worker:p{i}", T0 + timedelta(milliseconds=i), State.PROCESSING, key=KEY, progress={"current": i, "total": 9}) for i in range(9)]
    done = progress + [states.Event("worker:c", T0 + timedelta(seconds=1), State.COMPLETE, key=KEY)]
    keep = thin(T0, done, LINKS, None)
    assert keep is not None and [e.uid for e in keep] == ["worker:p0", "worker:c"]
