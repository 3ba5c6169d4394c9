"""PostgreSQL LISTEN/NOTIFY: changes committed by any process or host reach every process.

The writer's transaction runs ``pg_notify('gateway_jobs', 'job_id:version,…')``, so the notice
is sent if and only if the change commits. Each process keeps one listener thread (a greenlet
under gevent) on its own autocommit psycopg connection, outside the SQLAlchemy pool. Payloads
carry ids and versions only; the hub reads each changed job once per process.

NOTIFY is not durable: while the listener is disconnected, notices are lost. After every
(re)connect the listener asks the hub to resync, and the periodic resync catches the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from gateway.relay.bus import LocalBus, notices, parse_notice
from gateway.relay.coalesce import Coalescer
from gateway.relay.fresh import SYNC_PREFIX, Barrier
from gateway.relay.hub import Hub
from gateway.store import Change

log = logging.getLogger("gateway.relay")

CHANNEL = "gateway_jobs"
LISTENER_NAME = "gateway-relay-listener"  # application_name: operators (and tests) can find it
_NOTIFY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")


def libpq_dsn(engine: Engine) -> str:
    """The engine's database as a libpq URL (no SQLAlchemy driver suffix)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresBus(LocalBus):
    """LISTEN/NOTIFY between processes and hosts, plus the local bus for this process."""

    name = "postgres"

    def __init__(self, hub: Hub, engine: Engine, *, max_backoff: float = 10.0, progress_interval: float = 0.1):
        super().__init__(hub)
        self.dsn = libpq_dsn(engine)
        self.max_backoff = max_backoff
        self.connected = threading.Event()
        self.connects = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.barrier = Barrier(lambda marker: self._notify_outside([marker]))
        self.coalescer = Coalescer(self._announce_later, progress_interval)
        self._own_conn: psycopg.Connection | None = None
        self._own_lock = threading.Lock()

    def _notify_outside(self, payloads: list[str]) -> None:
        """NOTIFY outside any writer's transaction (barrier markers, trailing progress), on this
        process's own autocommit connection."""
        with self._own_lock:
            try:
                if self._own_conn is None or self._own_conn.closed:
                    self._own_conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME + "-notify")
                self._own_conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads))
            except psycopg.Error:
                if self._own_conn is not None:
                    self._own_conn.close()
                self._own_conn = None
                raise

    def _announce_later(self, changes: list[Change]) -> None:
        """The trailing announcement of held progress: committed versions, to everyone."""
        self.hub.notify((c.job_id, c.version) for c in changes)
        self._notify_outside(notices(changes))

    def publish_in_transaction(self, session: Session, changes: Sequence[Change]) -> None:
        """Inside the writer's transaction: the notices go out with the commit, never before.
        Progress-only changes of a storming job are held for one trailing notice (coalesce.py)."""
        now = self.coalescer.split(changes)
        if now:
            session.execute(_NOTIFY, {"channel": CHANNEL, "payloads": notices(now)})

    def published(self, changes: Sequence[Change]) -> None:
        """After commit: this process's hub, except for progress held for the trailing notice."""
        super().published([c for c in changes if not self.coalescer.is_held(c)])

    def start(self) -> None:
        """Start this process's listener (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._listen_forever, name="gateway-relay-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the listener end after its current wait."""
        self._stopped.set()

    def _listen_forever(self) -> None:
        backoff = 0.25
        while not self._stopped.is_set():
            try:
                self._listen()
                backoff = 0.25
            except Exception as exc:  # the database restarted or the backend was terminated
                self.connected.clear()
                self.hub.seen.reset(live=False)
                log.warning("relay listener lost its connection; reconnecting in %.2fs", backoff, extra={"error": type(exc).__name__})
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _listen(self) -> None:
        with psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.hub.seen.reset(live=True)  # from now on every commit's notice reaches us
            self.connects += 1
            self.connected.set()
            # anything committed before LISTEN took effect (first start, or while we were away)
            self.hub.resync()
            while not self._stopped.is_set():
                for note in conn.notifies(timeout=5.0):
                    if note.payload.startswith(SYNC_PREFIX):
                        self.barrier.received(note.payload)
                    else:
                        self.hub.notify(parse_notice(note.payload))
