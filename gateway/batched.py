"""Round trips shared by concurrent requests, each request still waiting for its own answer.

Under load many requests of one worker need the same kind of round trip at once: a rate-limit
charge in Redis (gateway/limits_redis.py), a change notice published to Redis
(gateway/relay/bus_redis.py). Neither can be left to a background sender: a charge's answer
decides the request, and a notice must be on the bus before the webhook is acknowledged (a poll
on another process trusts that everything acknowledged before its barrier marker is ahead of it,
relay/fresh.py). What can be shared is the round trip. While one request's round trip is in
flight, the requests arriving meanwhile queue their items; when it ends, the first of them sends
all the queued items at once and hands each request its own answer (the group commit of a
round trip). At low load a request sends alone, at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741  # an item a request sends
R = TypeVar("R")  # its answer


class _Slot(Generic[I, R]):
    """One request's item, its answer, and how it learns that it was sent or that it sends next."""

    __slots__ = ("answer", "done", "error", "item", "lead")

    def __init__(self, item: I):
        self.item = item
        self.answer: R | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lead = False


class Batched(Generic[I, R]):
    """``call(item)`` returns ``send``'s answer for ``item``, sent alone or in one batch with the
    items of the requests that queued while a send was in flight. ``send`` gets the items in
    queue order and answers one result per item, in that order; whatever it raises is raised in
    every request of the batch."""

    def __init__(self, send: Callable[[list[I]], Sequence[R]]):
        self._send = send
        self._lock = threading.Lock()
        self._queue: list[_Slot[I, R]] = []
        self._busy = False
        self.calls = 0
        self.sends = 0  # round trips made: fewer than calls when requests shared them

    def call(self, item: I) -> R:
        """Send ``item`` (in a batch when others are queued); its answer, once sent."""
        slot: _Slot[I, R] = _Slot(item)
        with self._lock:
            self.calls += 1
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()  # a leader answers it, or makes this request the next leader
        if lead or slot.lead:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.answer  # type: ignore[return-value]  # set by the batch that sent it

    def _lead(self) -> None:
        """Send everything queued now (this request's item included) and answer each request."""
        with self._lock:
            batch, self._queue = self._queue, []
            self.sends += 1
        try:
            answers = self._send([s.item for s in batch])
            for s, answer in zip(batch, answers, strict=True):
                s.answer = answer
        except BaseException as exc:  # every request of the batch learns it
            for s in batch:
                s.error = exc
        finally:
            with self._lock:
                if self._queue:  # arrived during the send: the first of them sends the next batch
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
            for s in batch:
                s.done.set()
