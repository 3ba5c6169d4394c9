"""gateway.batched: concurrent requests share a round trip, and each gets its own answer."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batched import Batched


def _run(batched: Batched[int, int], items: list[int]) -> tuple[dict[int, object], list[threading.Thread]]:
    answers: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            answers[i] = batched.call(items[i])
        except Exception as exc:
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return answers, threads


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=40))
def test_every_request_gets_the_answer_to_its_own_item(items):
    """Whatever the batching, a request's answer is ``send``'s answer for its own item, every item
    is sent exactly once, and a batch holds the items in the order they queued."""
    sent: list[list[int]] = []
    gate = threading.Lock()

    def send(batch: list[int]) -> list[int]:
        with gate:
            sent.append(list(batch))
        return [x * 2 + 1 for x in batch]

    batched: Batched[int, int] = Batched(send)
    answers, threads = _run(batched, items)
    assert not any(t.is_alive() for t in threads)
    assert answers == {i: x * 2 + 1 for i, x in enumerate(items)}
    assert sorted(x for b in sent for x in b) == sorted(items)
    assert batched.calls == len(items) and batched.sends == len(sent)


def test_requests_arriving_during_a_send_share_the_next_round_trip():
    """Ten requests queued behind a slow send go out together in one more round trip."""
    first_in, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def send(batch: list[str]) -> list[str]:
        batches.append(batch)
        if len(batches) == 1:
            first_in.set()
            assert release.wait(10)
        return [s.upper() for s in batch]

    batched: Batched[str, str] = Batched(send)
    out: dict[str, str] = {}
    leader = threading.Thread(target=lambda: out.__setitem__("a", batched.call("a")))
    leader.start()
    assert first_in.wait(10)
    waiting = [threading.Thread(target=lambda k=k: out.__setitem__(k, batched.call(k))) for k in "bcdefghijk"]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 10
    while len(batched._queue) < 10:  # a condition, not a duration: every one has queued behind the send
        assert time.monotonic() < deadline, "the requests did not queue"
        threading.Event().wait(0.001)
    release.set()
    for t in [leader, *waiting]:
        t.join(10)
    assert out == {k: k.upper() for k in "abcdefghijk"}
    assert [len(b) for b in batches] == [1, 10]
    assert batched.sends == 2 and batched.calls == 11


def test_a_failed_round_trip_fails_every_request_it_carried_and_the_next_ones_still_go():
    calls = {"n": 0}

    def send(batch: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("redis went away")
        return batch

    batched: Batched[int, int] = Batched(send)
    with pytest.raises(ConnectionError):
        batched.call(1)
    assert batched.call(2) == 2  # not stuck busy after the failure
