"""PostgreSQL LISTEN/NOTIFY: changes committed by any process or host reach every process.

The writer's transaction runs ``pg_notify('gateway_jobs', 'job_id:version,…')``, so the notice
is sent if and only if the change commits. Each process keeps one listener thread (a greenlet
under gevent) on its own autocommit psycopg connection, outside the SQLAlchemy pool. A payload
carries the job's JSON with its id and version when it fits in NOTIFY's 8,000 bytes (polls are
then answered from memory, relay/fresh.py), else ids and versions only.

NOTIFY is not durable: while the listener is disconnected, notices are lost. After every
(re)connect the listener asks the hub to resync, and the periodic resync catches the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import psycopg
from sqlalchemy import Engine

from gateway.relay.bus import ListeningBus, notices
from gateway.relay.coalesce import Coalescer
from gateway.relay.fresh import SYNC_PREFIX, Barrier
from gateway.relay.hub import Hub
from gateway.store import Change, Unit, fastpath

log = logging.getLogger("gateway.relay")

CHANNEL = "gateway_jobs"
LISTENER_NAME = "gateway-relay-listener"  # application_name: operators (and tests) can find it
_NOTIFY = "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p"
_NOTIFY_ONE = fastpath.preparable("SELECT pg_notify(%s, %s)")  # the common case: quoting one string is libpq's, an array's is Python's


def libpq_dsn(engine: Engine) -> str:
    """The engine's database as a libpq URL (no SQLAlchemy driver suffix)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresBus(ListeningBus):
    """LISTEN/NOTIFY between processes and hosts, plus the local bus for this process."""

    name = "postgres"
    thread_name = "gateway-relay-listen"
    what = "PostgreSQL listener"

    def __init__(self, hub: Hub, engine: Engine, *, max_backoff: float = 10.0, progress_interval: float = 0.1):
        super().__init__(hub, max_backoff=max_backoff)
        self.dsn = libpq_dsn(engine)
        self.connects = 0
        self.barrier = Barrier(self._send_marker)
        # this process's markers travel on a channel only it listens to: PostgreSQL keeps one
        # notification queue for every channel, in commit order, so a marker still proves every
        # notice committed before it reached us, and no other process receives it
        self.sync_channel = "gateway_sync_" + self.barrier.token[len(SYNC_PREFIX):-1].replace("-", "_")
        self.coalescer = Coalescer(self._announce_later, progress_interval)
        self._own_conn: psycopg.Connection | None = None
        self._own_lock = threading.Lock()

    def stop(self) -> None:
        """Let the listener end after its current wait, and close this process's NOTIFY connection
        (a stopped app, in a test or at shutdown, holds no connection of its own)."""
        super().stop()
        with self._own_lock:
            if self._own_conn is not None:
                self._own_conn.close()
                self._own_conn = None

    def _send_marker(self, marker: str) -> None:
        """A barrier marker to this process's own channel (``sync:<pid>-<hex>:<n>``: nothing to quote)."""
        self._notify_outside(f"NOTIFY {self.sync_channel}, '{marker}'")

    def _notify_outside(self, statement: str, params: tuple[object, ...] | None = None) -> None:
        """NOTIFY outside any writer's transaction (barrier markers, trailing progress), on this
        process's own autocommit connection. Its commits need no flush to disk: a notice is
        delivered at commit either way, and after a crash the listeners resync."""
        with self._own_lock:
            try:
                if self._own_conn is None or self._own_conn.closed:
                    self._own_conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME + "-notify",
                        options="-c synchronous_commit=off",
                    )
                self._own_conn.execute(statement, params)
            except psycopg.Error:
                if self._own_conn is not None:
                    self._own_conn.close()
                self._own_conn = None
                raise

    def _announce_later(self, changes: list[Change]) -> None:
        """The trailing announcement of held progress: committed versions, to everyone."""
        self.hub.heard(changes)
        self._notify_outside(_NOTIFY, (CHANNEL, notices(changes)))

    def publish_in_transaction(self, writer: Unit, changes: Sequence[Change]) -> None:
        """Inside the writer's transaction: the notices go out with the commit, never before
        (in the same round trip). Progress-only changes of a storming job are held for one
        trailing notice (coalesce.py)."""
        now = self.coalescer.split(changes)
        if now:
            payloads = notices(now)
            if len(payloads) == 1:
                writer.closing_sql(_NOTIFY_ONE, [CHANNEL, payloads[0]])
            else:
                writer.closing_sql(_NOTIFY, [CHANNEL, payloads])

    def published(self, changes: Sequence[Change]) -> None:
        """After commit: this process's hub, except for progress held for the trailing notice."""
        super().published([c for c in changes if not self.coalescer.is_held(c)])

    def _listen(self) -> None:
        with psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            conn.execute(f"LISTEN {self.sync_channel}")
            self.hub.seen.reset(live=True)  # from now on every commit's notice reaches us
            self.connects += 1
            self.connected.set()
            # anything committed before LISTEN took effect (first start, or while we were away)
            self.hub.resync()
            while not self._stopped.is_set():
                for note in conn.notifies(timeout=1.0):  # a stopped listener lets go of its connection within a second
                    self._deliver(note.payload)
