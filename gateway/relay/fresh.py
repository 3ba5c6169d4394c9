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
        with self._lock:
            return self._versions.get(job_id) if self.live else None


class Barrier:
    """Wait until every change published before the call has reached this process.

    ``send(marker)`` publishes a marker on the bus; the bus calls ``received(marker)`` when its
    subscriber sees one. One sender thread (a greenlet under gevent) sends a marker whenever
    someone waits for one sent after they arrived; everyone waiting for it proceeds together."""

    def __init__(self, send: Callable[[str], None], timeout: float = 1.0):
        self.send = send
        self.timeout = timeout
        self.token = f"{SYNC_PREFIX}{os.getpid()}-{os.urandom(4).hex()}:"
        self._cond = threading.Condition()
        self._sent = 0  # markers sent
        self._back = 0  # highest marker received
        self._wanted = 0  # highest marker someone waits for
        self._thread: threading.Thread | None = None
        self._thread_pid = 0

    def wait(self, timeout: float | None = None) -> bool:
        """True once a marker sent after this call began has come back; False after ``timeout``."""
        with self._cond:
            if self._thread is None or self._thread_pid != os.getpid() or not self._thread.is_alive():
                self._thread_pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="gateway-relay-barrier", daemon=True)
                self._thread.start()
            want = self._sent + 1
            self._wanted = max(self._wanted, want)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._back >= want, self.timeout if timeout is None else timeout)

    def received(self, payload: str) -> bool:
        """A marker payload from the bus; True if it was this process's."""
        if not payload.startswith(self.token):
            return False
        n = payload[len(self.token):]
        if n.isdigit():
            with self._cond:
                self._back = max(self._back, int(n))
                self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted > self._sent)
                self._sent += 1
                n = self._sent
            try:
                self.send(f"{self.token}{n}")
            except Exception as exc:  # the database or Redis is away: the waiters time out and read
                log.warning("relay barrier could not publish", extra={"error": type(exc).__name__})
                with self._cond:
                    self._cond.wait(self.timeout)
                continue
            with self._cond:
                self._cond.wait_for(lambda: self._back >= n, self.timeout)
