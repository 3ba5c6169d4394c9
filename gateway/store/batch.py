"""Group commit: webhooks that reach one worker together share one transaction and one commit.

``GroupCommit.write(fn, keys)`` stands for ``Store.write(fn)``: ``fn`` is the caller's own
per-webhook function, run on a ``Writer`` exactly as ``Store.write`` would run it; the caller
gets its own result and changes back, or its own exception, only after the commit that holds
its rows. What changes is only whose transaction ``fn`` runs in.

Leader and followers (per process; under gevent a "thread" is a greenlet):

* a call that finds fewer than ``max_in_flight`` batches in flight leads at once, a batch of its
  own: at low load webhooks are separate transactions, as without grouping;
* calls that arrive while ``max_in_flight`` batches are in flight queue up; when one has
  committed, the first of them leads the next batch, which is everything queued by then (at
  most ``max_batch``). Only that leader, formed under load, lingers ``window`` seconds for more
  arrivals first;
* ``window = 0`` turns grouping off: every call is ``Store.write``.

A batch's transaction first takes every lock its webhooks will take, in the one global order
(queue locks by name, then job rows by id: ``Writer.lock_batch``), then runs the functions one
after another: two events of the same job are applied in arrival order under the one row lock
the batch holds. Isolation is by re-running, not savepoints: when one function raises, the
transaction is rolled back, the others are run again as a batch without it, and it runs on its
own through ``Store.write`` so it meets exactly the answer it would have had alone (its error
reaches only its own caller). A transient conflict, or a failure in the closing writes that no
one function owns, sends every member of the batch through ``Store.write`` on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.store.unit import Change, is_transient
from gateway.store.writer import Writer

T = TypeVar("T")


class Store(Protocol):
    """What the group needs of ``gateway.store.Store`` (transaction.py, which owns the group)."""

    def transaction(self) -> AbstractContextManager[Writer]: ...

    def write(self, fn: Callable[[Writer], T], attempts: int = 3) -> tuple[T, list[Change]]: ...


LockKeys = list[tuple[str, str, bool]]  # (source, external_id, the event may leave its job in a queue state)
MAX_BATCH = 32
#: transactions one worker runs at once before arrivals queue for a batch: below this, webhooks
#: overlap their round trips as separate transactions (within the pool's 5 connections)
IN_FLIGHT = 4


@dataclass(eq=False)
class _Member(Generic[T]):
    """One caller's function and, once its batch has committed, its outcome."""

    fn: Callable[[Writer], T]
    keys: LockKeys
    done: threading.Event = field(default_factory=threading.Event)  # settled, or asked to lead
    lead: bool = False
    under_load: bool = False  # asked to lead by the batch before: it lingers for company
    batch: list[_Member[Any]] = field(default_factory=list)  # handed with the lead: what was queued
    settled: bool = False
    alone: bool = False  # run fn through Store.write on its own
    result: Any = None
    changes: list[Change] = field(default_factory=list)
    error: Exception | None = None


class GroupCommit:
    """One process's group commit in front of ``store``; see the module docstring."""

    def __init__(self, store: Store, window_ms: int = 0, *, max_batch: int = MAX_BATCH, max_in_flight: int = IN_FLIGHT):
        self.store = store
        self.window = window_ms / 1000
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size (a metric)
        self._lock = threading.Lock()
        self._waiting: list[_Member[Any]] = []
        self._in_flight = 0  # batches being written now
        self.fallbacks = 0  # batches whose members all ran on their own (a conflict, a failed commit)

    @property
    def waiting(self) -> int:
        """Calls queued for the next batch (not yet taken by a leader)."""
        return len(self._waiting)

    def write(self, fn: Callable[[Writer], T], keys: LockKeys) -> tuple[T, list[Change]]:
        """``Store.write(fn)``, possibly in one transaction with other callers' functions: its
        result and its own changes once committed, or its own exception. ``keys``: the
        (source, external_id, may queue) of each event ``fn`` records, whose locks a batch
        takes first, in order."""
        if self.window <= 0:
            return self.store.write(fn)
        member: _Member[T] = _Member(fn, keys)
        with self._lock:
            if self._in_flight < self.max_in_flight:
                self._in_flight += 1
                member.lead = True
            else:
                self._waiting.append(member)
        if not member.lead:
            member.done.wait()
        if member.lead:
            self._lead(member)
        if member.alone:
            return self.store.write(fn)
        if member.error is not None:
            raise member.error
        return member.result, member.changes

    def _lead(self, leader: _Member[Any]) -> None:
        """Take what is queued (the leader first), commit it, hand the lead to the next caller
        in line, then wake this batch's callers."""
        batch: list[_Member[Any]] = leader.batch or [leader]
        try:
            if leader.under_load:
                time.sleep(self.window)
            with self._lock:
                room = self.max_batch - len(batch)
                batch = [*batch, *self._waiting[:room]]
                del self._waiting[:room]
            self._commit(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
        finally:
            with self._lock:
                successor = self._waiting[0] if self._waiting else None
                if successor is not None:  # it leads everything queued now (the next to finish finds none)
                    successor.lead = successor.under_load = True
                    successor.batch = self._waiting[: self.max_batch]
                    del self._waiting[: self.max_batch]
                else:
                    self._in_flight -= 1
            if successor is not None:
                successor.done.set()
            for member in batch:
                if not member.settled:  # the leader was interrupted: each runs on its own
                    member.alone = True
                if member is not leader:
                    member.done.set()

    def _commit(self, batch: list[_Member[Any]]) -> None:
        """One transaction for the batch; a member whose function raises is taken out and the
        rest run again (module docstring)."""
        if len(batch) == 1:
            only = batch[0]
            try:
                only.result, only.changes = self.store.write(only.fn)
            except Exception as exc:
                only.error = exc
            only.settled = True
            return
        pending = list(batch)
        while len(pending) > 1:
            current: _Member[Any] | None = None
            spans: list[tuple[int, int]] = []
            try:
                with self.store.transaction() as w:
                    w.lock_batch([k for m in pending for k in m.keys])
                    for current in pending:
                        start = len(w.changes)
                        current.result = current.fn(w)
                        spans.append((start, len(w.changes)))
                    current = None  # what fails from here (the closing writes, the commit) is no one's own
            except Exception as exc:
                if current is None or is_transient(exc):
                    break
                current.alone = current.settled = True
                pending.remove(current)
                continue
            for member, (start, end) in zip(pending, spans, strict=True):
                member.changes = w.changes[start:end]
                member.settled = True
            return
        if len(pending) > 1:
            self.fallbacks += 1
        for member in pending:
            member.alone = member.settled = True
