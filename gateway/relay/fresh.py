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

A poll that cannot be a 304 is answered from memory too when the process holds the job's JSON
at that version (``VersionCache.body_at``): kept for jobs polled here recently, filled by the
poll's own database read and replaced by the JSON a notice carries (bus.py ``notices``). Every
notice of the job replaces or drops it — a new version without its JSON, and JSON that moved
at the same version (``same_version``: ``updated_at``, ``queue.total``) — so what a poll
answers from memory is always what a database read would give once the barrier is passed:

* a notice's JSON is taken only for a version newer than the one held, so a late copy of an
  old version (our own commit's, handed over after a later notice) never replaces anything;
* a database read's JSON is taken only if no notice of the job arrived while it ran (a tick).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("gateway.relay")

SYNC_PREFIX = "sync:"  # bus payloads that are barrier markers, not changes


class _Body(NamedTuple):
    """The JSON held for one job: of ``version`` (None: only the database knows it), and the
    tick of the last notice or read that set it. Replaced whole, so a reader sees one of them."""

    version: int
    text: str | None
    tick: int


class VersionCache:
    """Latest known version per job id, bounded (least recently updated out first), and the JSON
    of the jobs polled here recently (``bodies`` of them at most)."""

    def __init__(self, size: int = 100_000, bodies: int = 10_000):
        self.size = size
        self.bodies = bodies
        self.epoch = 0
        self.live = False
        self._versions: OrderedDict[str, int] = OrderedDict()
        self._bodies: OrderedDict[str, _Body] = OrderedDict()
        self._tick = 0
        self._lock = threading.Lock()

    def reset(self, live: bool) -> None:
        """The subscriber (re)connected (``live``) or dropped: forget everything, new epoch."""
        with self._lock:
            self._versions.clear()
            self._bodies.clear()
            self.epoch += 1
            self.live = live

    def heard(self, job_id: str, version: int, text: str | None, same_version: bool) -> None:
        """A notice of ``job_id`` at ``version``, with its JSON (``text``) if the bus carried it:
        replaces or drops the JSON held for the job, if any (see the module docstring)."""
        held = self._bodies.get(job_id)
        if held is None or version < held.version:
            return  # not polled here lately (most notices), or older than what is held
        with self._lock:
            held = self._bodies.get(job_id)
            if held is not None and (version > held.version or (same_version and version == held.version)):
                self._tick += 1
                self._bodies[job_id] = _Body(version, None if same_version else text, self._tick)

    def before_read(self, job_id: str) -> tuple[int, int]:
        """Call before reading the job from the database; hand the result to ``read``."""
        with self._lock:
            held = self._bodies.get(job_id)
            if held is None and self.bodies > 0:
                self._tick += 1
                held = self._bodies[job_id] = _Body(-1, None, self._tick)
                while len(self._bodies) > self.bodies:
                    self._bodies.popitem(last=False)
            elif held is not None:
                self._bodies.move_to_end(job_id)
            return self.epoch, held.tick if held is not None else -1

    def read(self, job_id: str, version: int, text: str, token: tuple[int, int]) -> None:
        """The job's JSON as a database read found it: kept if the subscriber stayed connected and
        no notice of the job arrived since ``before_read`` gave ``token``."""
        with self._lock:
            held = self._bodies.get(job_id)
            if self.live and token[0] == self.epoch and held is not None and held.tick == token[1] and version >= held.version:
                self._tick += 1
                self._bodies[job_id] = _Body(version, text, self._tick)

    def body_at(self, job_id: str, version: int) -> str | None:
        """The job's JSON at ``version``, if held."""
        held = self._bodies.get(job_id) if self.live else None
        return held.text if held is not None and held.version == version else None

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
