"""Subscriptions that end when their job token expires (contract §4: ``token_expired``).

A WebSocket subscription or SSE stream opened with a job token lives no longer than the token.
Each such watcher is filed here under the second its earliest token expires; one loop per
process (``Relay._expire_forever``) takes what is due and calls its ``expire(now)``, which ends
the expired subscriptions and files the watcher again if it holds a later token. Memory: one
set entry per watcher with a token; no greenlet or timer per socket.
"""

from __future__ import annotations

import heapq
import threading
from typing import Protocol


class Expiring(Protocol):
    """A watcher whose subscriptions end when their token expires."""

    def expire(self, now: float) -> None: ...


class Expiries:
    """Watchers by the second (unix time) their earliest token expires."""

    def __init__(self) -> None:
        self._due: dict[int, set[Expiring]] = {}
        self._seconds: list[int] = []  # a heap of the keys of ``_due`` (some maybe emptied since)
        self._lock = threading.Lock()

    def add(self, at: int, watcher: Expiring) -> None:
        """File ``watcher`` to be expired once the clock is past ``at``."""
        with self._lock:
            group = self._due.get(at)
            if group is None:
                group = self._due[at] = set()
                heapq.heappush(self._seconds, at)
            group.add(watcher)

    def discard(self, at: int, watcher: Expiring) -> None:
        """Forget ``watcher`` filed under ``at`` (it closed, or moved to an earlier second)."""
        with self._lock:
            group = self._due.get(at)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._due[at]

    def take(self, now: float) -> list[Expiring]:
        """Every watcher filed under a second before ``now`` (a token is valid through its second)."""
        due: list[Expiring] = []
        with self._lock:
            while self._seconds and self._seconds[0] < now:
                due.extend(self._due.pop(heapq.heappop(self._seconds), ()))
        return due

    def __len__(self) -> int:
        return sum(len(group) for group in self._due.values())
