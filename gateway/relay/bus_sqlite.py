"""SQLite's change feed: the ``changes`` table, followed by every local process.

SQLite has no cross-process notification, and a file-watching scheme (inotify) would be
Linux-only and still need an ordered record of what changed. So the writer inserts
(job id, version) rows in its own transaction (``BEGIN IMMEDIATE`` makes commit order the
``seq`` order), and one follower thread per process reads ``seq > last`` every
``POLL_SECONDS``. In WAL mode that read never blocks a writer and costs a primary-key range
scan of usually zero rows. Old rows are pruned; a follower that fell further behind than the
pruning window is caught up by the hub's resync like any missed notice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert

from gateway.ids import utcnow
from gateway.models import ChangeFeed
from gateway.relay.bus import LocalBus
from gateway.relay.hub import Hub
from gateway.store import Change, Unit

log = logging.getLogger("gateway.relay")

POLL_SECONDS = 0.01
KEEP = timedelta(minutes=5)
BATCH = 5000


class SqliteBus(LocalBus):
    """The ``changes`` table between local processes, plus the local bus for this process."""

    name = "sqlite"

    def __init__(self, hub: Hub, engine: Engine, *, poll: float = POLL_SECONDS):
        super().__init__(hub)
        self.engine = engine
        self.poll = poll
        self.last_seq: int | None = None
        self.resyncs = 0
        self._raw: Any = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_in_transaction(self, writer: Unit, changes: Sequence[Change]) -> None:
        """Inside the writer's transaction: the rows become visible with the commit."""
        now = utcnow()
        writer.session.execute(insert(ChangeFeed), [{"job_id": c.job_id, "version": c.version, "at": now} for c in changes])

    def start(self) -> None:
        """Start this process's follower (once), from the feed's current end."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._follow, name="gateway-relay-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the follower end after its current tick."""
        self._stopped.set()

    def _follow(self) -> None:
        while not self._stopped.wait(self.poll):
            try:
                self.read_new()
            except Exception:  # a locked or missing database: try again next tick
                log.warning("relay change feed read failed", exc_info=True)
                self._close()

    def _cursor(self) -> Any:
        # A pooled DBAPI connection in driver autocommit: each SELECT reads a WAL snapshot and
        # never takes the write lock (the engine's own transactions start BEGIN IMMEDIATE).
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        return self._raw.cursor()

    def _close(self) -> None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            try:
                raw.invalidate()
            except Exception:
                pass

    def read_new(self) -> int:
        """Hand every row after ``last_seq`` to the hub; the first call finds the end and resyncs."""
        cur = self._cursor()
        try:
            if self.last_seq is None:
                cur.execute("SELECT coalesce(max(seq), 0) FROM changes")
                self.last_seq = cur.fetchone()[0]
                rows = []
            else:
                cur.execute("SELECT seq, job_id, version FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (self.last_seq, BATCH))
                rows = cur.fetchall()
        finally:
            cur.close()
        if not rows:
            if self.resyncs == 0:
                self.resyncs += 1
                self.hub.resync()  # anything committed before the follower started
            return 0
        self.last_seq = rows[-1][0]
        # a row cannot say whether the version is new or only its JSON moved (same_version): the
        # hub takes it as both, so no JSON held for a poll outlives it
        self.hub.heard([Change(job_id, version, same_version=True) for _, job_id, version in rows])
        return len(rows)

    def prune(self) -> int:
        """Delete rows older than ``KEEP``; run now and then by one of the periodic tasks."""
        with self.engine.begin() as conn:
            return conn.execute(delete(ChangeFeed).where(ChangeFeed.at < utcnow() - KEEP)).rowcount
