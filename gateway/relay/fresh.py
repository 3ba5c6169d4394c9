"""Answering a conditional poll from memory, without hiding a change.

``GET /api/jobs/<id>`` with ``If-None-Match`` is the most frequent request a gateway serves,
and usually nothing changed. Each process keeps the latest version it knows of recently
seen jobs (``VersionCache``), fed by every notice its bus delivers — the bus carries every
change of every job to every process — and by its own database reads.

A version in memory is current only if no change committed since is still on its way. Two
rules make the 304 sound:

* the cache lives only while the bus's subscriber is connected: a (re)connect or a drop
  clears it and starts a new epoch, and a database read is learnt only if the epoch did not
  change while it ran (the subscriber was listening before the read's snapshot);
* before answering from memory, a ``Barrier``: this process publishes a marker on the bus
  and waits until its own subscriber receives it. Buses deliver in commit (or publish)
  order, and a webhook is acknowledged only after its commit and its publish, so once the
  marker is back, every change acknowledged before the poll arrived is in the cache. One
  marker serves every poll that was waiting for it, so under load many polls share one
  round trip. If the marker does not come back in time, the poll reads the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("gateway.relay")

SYNC_PREFIX = "sync:"  # bus payloads that are barrier markers, not changes


class VersionCache:
    """Latest known version per job id, bounded (least recently updated out first)."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self.epoch = 0
        self.live = False
        self._versions: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def reset(self, live: bool) -> None:
        """The subscriber (re)connected (``live``) or dropped: forget everything, new epoch."""
        with self._lock:
            self._versions.clear()
            self.epoch += 1
            self.live = live

    def saw(self, job_id: str, version: int, epoch: int | None = None) -> None:
        """A version of ``job_id`` exists; kept if it is the newest known (and, for a database
        read, if the epoch it started in is still the current one)."""
        with self._lock:
            if not self.live or (epoch is not None and epoch != self.epoch):
                return
            held = self._versions.get(job_id)
            if held is None or held < version:
                self._versions[job_id] = version
                self._versions.move_to_end(job_id)
                if len(self._versions) > self.size:
                    self._versions.popitem(last=False)

    def get(self, job_id: str) -> int | None:
        """The version held for ``job_id`` while the subscriber is connected, else None (each
        read is one atomic step: no lock)."""
        return self._versions.get(job_id) if self.live else None


class _Round:
    """One marker and the polls waiting for it; ``back`` is set when the marker returns."""

    __slots__ = ("back", "n")

    def __init__(self, n: int):
        self.n = n
        self.back = threading.Event()


class Barrier:
    """Wait until every change published before the call has reached this process.

    ``send(marker)`` publishes a marker on the bus; the bus calls ``received(marker)`` when its
    subscriber sees one. Polls join the round whose marker is sent next; one sender thread (a
    greenlet under gevent) sends it once someone has joined and the previous marker is back
    (or timed out), so every poll waiting meanwhile shares one round trip. A poll waits on its
    round's event alone: under gevent that is gevent's ``Event``, with no lock per waiter."""

    def __init__(self, send: Callable[[str], None], timeout: float = 1.0):
        self.send = send
        self.timeout = timeout
        self.token = f"{SYNC_PREFIX}{os.getpid()}-{os.urandom(4).hex()}:"
        self._lock = threading.Lock()
        self._next = _Round(1)  # the round polls join; its marker is not sent yet
        self._flying: _Round | None = None  # the round whose marker is on its way
        self._joined = threading.Event()  # someone waits for ``_next``
        self._sender_pid = 0  # the process whose sender thread is running (0: none)

    def wait(self, timeout: float | None = None) -> bool:
        """True once a marker sent after this call began has come back; False after ``timeout``."""
        if self._sender_pid != os.getpid():
            self._start_sender()
        joined = self._next  # one atomic read; the sender replaces it before sending its marker
        self._joined.set()
        return joined.back.wait(self.timeout if timeout is None else timeout)

    def received(self, payload: str) -> bool:
        """A marker payload from the bus; True if it was this process's."""
        if not payload.startswith(self.token):
            return False
        n = payload[len(self.token):]
        flying = self._flying
        # markers come back in the order sent: this one proves every round up to it
        if n.isdigit() and flying is not None and flying.n <= int(n):
            flying.back.set()
        return True

    def _start_sender(self) -> None:
        with self._lock:
            if self._sender_pid != os.getpid():
                self._sender_pid = os.getpid()
                threading.Thread(target=self._run, name="gateway-relay-barrier", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                self._joined.wait()
                with self._lock:
                    self._joined.clear()
                    rnd, self._next = self._next, _Round(self._next.n + 1)
                    self._flying = rnd
                try:
                    self.send(f"{self.token}{rnd.n}")
                except Exception as exc:  # the database or Redis is away: the waiters time out and read
                    log.warning("relay barrier could not publish", extra={"error": type(exc).__name__})
                    time.sleep(self.timeout)
                    continue
                rnd.back.wait(self.timeout)
        finally:
            self._sender_pid = 0  # the next wait starts another
