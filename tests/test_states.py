"""The state machine's rules, and the contract's property: any order and any duplication of the
same events ends in the same job — webhooks, worker reports, retries, stalls and status reads
from the provider's API (kind ``reconcile``) alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import states
from gateway.states import Decision, Event, Kind, Link, State

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
K1 = ("src", "ext-1")
K2 = ("src", "ext-2")


def ev(uid: str, ms: int, state: State | None, key=K1, kind=Kind.PROVIDER, **fields) -> Event:
    return Event(uid=uid, occurred_at=T0 + timedelta(milliseconds=ms), state=state, key=key, kind=kind, **fields)


def fold(events, links=(Link(K1, None),)):
    return states.fold(T0 - timedelta(seconds=1), events, links, label="job")


def test_registered_job_without_events_is_queued():
    view, _ = fold([])
    assert (view.state, view.attempt) == (State.QUEUED, 1)


def test_forward_moves_and_progress():
    view, d = fold([ev("a", 0, State.QUEUED), ev("b", 10, State.PROCESSING, progress={"current": 1, "total": 4}), ev("c", 20, State.PROCESSING, progress={"current": 3, "total": 4})])
    assert view.state is State.PROCESSING and view.progress == {"current": 3, "total": 4}
    assert set(d.values()) == {Decision.APPLIED}


def test_late_queued_after_processing_is_stale():
    view, d = fold([ev("b", 10, State.PROCESSING), ev("a", 20, State.QUEUED)])
    assert view.state is State.PROCESSING and d["a"] is Decision.STALE


def test_complete_is_terminal():
    view, d = fold([ev("a", 0, State.COMPLETE, result={"url": "u"}), ev("b", 10, State.FAILED), ev("c", 20, State.PROCESSING)])
    assert view.state is State.COMPLETE and view.result == {"url": "u"}
    assert d["b"] is Decision.STALE and d["c"] is Decision.STALE


def test_newer_event_after_failure_opens_next_attempt():
    view, d = fold([ev("a", 0, State.FAILED, error={"code": "x"}), ev("b", 0, State.FAILED), ev("c", 5, State.PROCESSING)])
    # "b" (same instant, same rank, sorts after by id) is not strictly newer than the failure; "c" is
    assert d["b"] is Decision.STALE and d["c"] is Decision.APPLIED
    assert (view.state, view.attempt) == (State.PROCESSING, 2)


def test_failed_error_defaults_to_retryable():
    view, _ = fold([ev("a", 0, State.FAILED)])
    assert view.error == {"code": "failed", "message": "The job failed.", "retryable": True}


def test_retry_time_is_after_failure():
    view, _ = fold([ev("a", 5000, State.FAILED)])
    assert states.retry_time(view, T0) == T0 + timedelta(milliseconds=5001)


def test_superseded_after_link():
    links = (Link(K1, None, "1"), Link(K2, T0 + timedelta(milliseconds=100), "2"))
    events = [
        ev("a", 0, State.FAILED),
        ev("link", 100, None, key=K2, kind=Kind.LINK),
        ev("b", 150, State.PROCESSING, key=K1),  # the old attempt's late news
        ev("c", 200, State.PROCESSING, key=K2, progress={"current": 1}),
    ]
    view, d = fold(events, links)
    assert d["b"] is Decision.SUPERSEDED
    assert (view.state, view.attempt, view.progress) == (State.PROCESSING, 2, {"current": 1})


# -- the property ---------------------------------------------------------------------------

STATES = [State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED, None]


@st.composite
def histories(draw):
    n = draw(st.integers(1, 12))
    events = []
    for i in range(n):
        state = draw(st.sampled_from(STATES))
        fields = {}
        if state is State.PROCESSING:
            fields["progress"] = {"current": draw(st.integers(0, 100)), "total": 100}
        if state is State.FAILED:
            fields["error"] = {"code": draw(st.sampled_from(["a", "b"])), "retryable": draw(st.booleans())}
        if state is State.QUEUED and draw(st.booleans()):
            fields["queue"] = {"position": draw(st.integers(1, 9))}
        if draw(st.booleans()):
            fields["label"] = draw(st.sampled_from(["x", "y"]))
        kind = Kind.PROVIDER
        if state is State.QUEUED and draw(st.integers(0, 5)) == 0:
            kind = Kind.RETRY
        elif state is State.FAILED and draw(st.integers(0, 3)) == 0:
            kind, fields["error"] = Kind.WATCHDOG, {"code": "stalled", "retryable": True}
        elif draw(st.integers(0, 2)) == 0:
            kind = Kind.RECONCILE  # the same provider's word, read from its API (issue 21)
        key = K1 if kind in states.KEYED else None
        events.append(ev(f"e{i}", draw(st.integers(0, 6)) * 100, state, kind=kind, key=key, **fields))
    return events


def public(view):
    return (view.state, view.attempt, view.label, view.progress, view.queue, view.error, view.result, view.state_changed_at, view.updated_at, view.queued_since)


@settings(max_examples=400, deadline=None)
@given(histories(), st.randoms(use_true_random=False), st.lists(st.integers(0, 11), max_size=6))
def test_any_order_and_duplication_gives_the_same_job(events, rnd, dup_idx):
    baseline, _ = fold(events)
    shuffled = list(events) + [events[i % len(events)] for i in dup_idx]
    rnd.shuffle(shuffled)
    again, _ = fold(shuffled)
    assert public(again) == public(baseline)


@settings(max_examples=400, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_incremental_application_in_arrival_order_matches_after_refold(events, rnd):
    """What the store does: apply in arrival order when newest, re-fold when late."""
    arrival = list(events)
    rnd.shuffle(arrival)
    seen = []
    view = states.initial(T0 - timedelta(seconds=1), "job")
    for e in arrival:
        seen.append(e)
        if view.last is None or e.sort_key() > view.last:
            view, _ = states.apply(view, e, (Link(K1, None),))
        else:
            view, _ = fold(seen)
    assert public(view) == public(fold(events)[0])


@settings(max_examples=300, deadline=None)
@given(histories())
def test_complete_never_changes_and_no_state_moves_back_within_an_attempt(events):
    ordered = sorted(events, key=Event.sort_key)
    view = states.initial(T0 - timedelta(seconds=1), "job")
    for e in ordered:
        before = view
        view, _ = states.apply(view, e, (Link(K1, None),))
        if before.state is State.COMPLETE:
            assert public(view)[:7] == public(before)[:7]
        if view.attempt == before.attempt and not before.stalled:  # rule 6: a stall may resume
            assert states.RANK[view.state] >= states.RANK[before.state]
