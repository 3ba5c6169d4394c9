"""Progress storms: a job reporting progress 100 times a second must not flood the bus (each
PostgreSQL NOTIFY serialises its commit on one global lock) nor the watchers.

Per process and per job, a change whose only difference is ``progress`` is announced at once
if the job's last announcement is older than ``interval``; otherwise it is held, and one
trailing announcement of the newest held version goes out when the interval has passed
(outside any transaction: the version is committed by then). Every other change — state,
attempt, error, result, label, queue position — is announced at once, always. So watchers and
pollers see a storming job's progress at most ``1/interval`` times a second per writer
process, its final progress at most ``interval`` late, and its state changes never late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from gateway.store import Change

log = logging.getLogger("gateway.relay")

PROGRESS_INTERVAL = 0.1  # seconds: at most 10 progress announcements per job per second per process


class Coalescer:
    """Decides which changes are announced now; announces the held ones later via ``flush``."""

    def __init__(self, flush: Callable[[list[Change]], None], interval: float = PROGRESS_INTERVAL):
        self.flush = flush
        self.interval = interval
        self.held = 0  # progress changes not announced on their own (for metrics and benchmarks)
        self._last: dict[str, float] = {}  # job id → when it was last announced
        self._pending: dict[str, Change] = {}  # job id → newest held change
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def split(self, changes: Sequence[Change]) -> list[Change]:
        """The changes to announce now; the rest are held for the trailing announcement."""
        now = time.monotonic()
        out = []
        with self._lock:
            for c in changes:
                if c.same_version:  # not a version: nothing to coalesce
                    out.append(c)
                    continue
                last = self._last.get(c.job_id)
                if c.progress_only and last is not None and now - last < self.interval:
                    held = self._pending.get(c.job_id)
                    if held is None or held.version < c.version:
                        self._pending[c.job_id] = c
                    self.held += 1
                    continue
                self._last[c.job_id] = now
                held = self._pending.get(c.job_id)
                if held is not None and held.version <= c.version:
                    del self._pending[c.job_id]  # this announcement covers it
                out.append(c)
            if len(self._last) > 10_000:  # forget jobs quiet for longer than the interval
                self._last = {j: t for j, t in self._last.items() if now - t < self.interval or j in self._pending}
        if len(out) < len(changes):
            self._ensure_started()
            self._wake.set()
        return out

    def is_held(self, change: Change) -> bool:
        """Whether ``change`` waits for the trailing announcement."""
        held = self._pending.get(change.job_id)
        return held is not None and held.version >= change.version and not change.same_version

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="gateway-relay-coalesce", daemon=True)
            self._thread.start()

    def due(self, now: float) -> tuple[list[Change], float | None]:
        """Held changes whose interval has passed (now announced), and when the next is due."""
        ready, next_due = [], None
        with self._lock:
            for job_id, c in list(self._pending.items()):
                at = self._last.get(job_id, 0.0) + self.interval
                if at <= now:
                    ready.append(c)
                    del self._pending[job_id]
                    self._last[job_id] = now
                else:
                    next_due = at if next_due is None else min(next_due, at)
        return ready, next_due

    def _run(self) -> None:
        while True:
            ready, next_due = self.due(time.monotonic())
            if ready:
                try:
                    self.flush(ready)
                except Exception as exc:  # the bus is away: the resync catches the watchers up
                    log.warning("relay: trailing progress announcement failed", extra={"error": type(exc).__name__})
            if next_due is None:
                self._wake.wait(1.0)
            else:
                self._wake.wait(max(0.0, next_due - time.monotonic()))
            self._wake.clear()
