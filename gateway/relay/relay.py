"""This process's relay: the hub, the bus, the long-poll wait, and the loops that keep the open
sockets alive (a WebSocket ping, an SSE heartbeat). ``gateway.relay.init_app`` builds one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.http import etag, tag_matches
from gateway.jobjson import job_json, job_text
from gateway.models import Job
from gateway.relay.bus import LocalBus, RelayBus
from gateway.relay.expiry import Expiries
from gateway.relay.fresh import VersionCache
from gateway.relay.hub import Hub, Mailbox, Snapshot, Watcher
from gateway.services import Services
from gateway.store import Store

log = logging.getLogger("gateway.relay")

EXPIRY_CHECK_SECONDS = 1.0  # a subscription outlives its token by at most about this much


class Relay:
    """This process's relay: the hub, the bus, and the long-poll wait."""

    def __init__(self, gw: Services, bus_name: str):
        self.gw = gw
        self.store: Store = gw.store
        self.fanout_seconds = Histogram(
            "gateway_relay_fanout_seconds", "Time to hand one snapshot to every local watcher of its job",
            registry=gw.metrics.registry, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.polls_from_memory = Counter(
            "gateway_relay_polls_from_memory", "Conditional polls answered 304 from the version cache, with no database read",
            registry=gw.metrics.registry,
        )
        self.reads = Counter(
            "gateway_relay_reads", "Jobs the relay read from the database for its watchers: a first subscription in this "
            "process, a notice that did not carry the job's JSON, a resync that found one behind",
            registry=gw.metrics.registry,
        )
        self.hub = Hub(load=self._load, versions=self._versions, on_fanout=self.fanout_seconds.observe,
                       seen=VersionCache(bodies=gw.config.poll_memory_jobs))
        self.bus: RelayBus = make_bus(
            bus_name, self.hub, self.store, gw.config.redis_url, progress_interval=gw.config.progress_interval_ms / 1000
        )
        self.connections: set[Any] = set()  # this process's WebSocket connections (ws.Connection)
        self.streams: set[Any] = set()  # this process's detached SSE streams (sse.Stream)
        self.expiries = Expiries()  # WebSocket connections and SSE streams holding job tokens
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()

    # -- reads, one query each, no session kept --------------------------------------------------

    def _load(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.store.reading() as session:
            found = {job.id: job_json(job) for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        self.reads.inc(len(ids))
        return found

    def _versions(self, ids: Sequence[str]) -> dict[str, int]:
        with self.store.reading() as session:
            return {row.id: row.version for row in session.execute(select(Job.id, Job.version).where(Job.id.in_(ids)))}

    # -- watching ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bus's follower in this process, once (after a fork, again)."""
        if self._started_pid == os.getpid():
            return
        with self._start_lock:
            if self._started_pid != os.getpid():
                self._started_pid = os.getpid()
                self.bus.start()
                if self.gw.config.ws_ping_interval:
                    threading.Thread(target=self._ping_forever, name="gateway-relay-ping", daemon=True).start()
                threading.Thread(target=self._beat_forever, name="gateway-relay-heartbeat", daemon=True).start()
                threading.Thread(target=self._expire_forever, name="gateway-relay-expiry", daemon=True).start()

    def _ping_forever(self) -> None:
        """Protocol pings to every WebSocket of this process, every ``ws_ping_interval`` seconds."""
        interval = self.gw.config.ws_ping_interval
        while True:
            time.sleep(interval)
            for conn in list(self.connections):
                conn.ping()

    def _beat_forever(self) -> None:
        """A heartbeat comment on every detached SSE stream of this process, every ``sse_heartbeat``
        seconds (at most 20)."""
        interval = heartbeat_seconds(self.gw.config)
        while True:
            time.sleep(interval)
            for stream in list(self.streams):
                stream.beat()

    def going_away(self, wait: float = 2.0) -> int:
        """This process is shutting down (a deploy, a rolling restart): every WebSocket gets a
        1001 "going away" close and every SSE stream ends cleanly, so clients reconnect at once to a
        live process with the last version they saw. Waits up to ``wait`` seconds for the closes
        to be written; the number of connections told."""
        told = list(self.connections) + list(self.streams)
        for conn in told:
            conn.going_away()
        deadline = time.monotonic() + wait
        while any(not c.closed for c in told) and time.monotonic() < deadline:
            time.sleep(0.01)  # gevent-patched in a worker: the event loop writes meanwhile
        return len(told)

    def _expire_forever(self) -> None:
        """Every second: end the subscriptions whose job token has expired (``token_expired``)."""
        clock = self.gw.auth.clock
        while True:
            time.sleep(EXPIRY_CHECK_SECONDS)
            now = clock()
            for watcher in self.expiries.take(now):
                try:
                    watcher.expire(now)
                except Exception:  # one broken watcher never stops the others
                    log.exception("ending an expired subscription failed")

    def watch(self, job_id: str, watcher: Watcher) -> None:
        """Tell ``watcher`` about each new version of ``job_id``, from whichever process commits it."""
        self.start()
        self.hub.watch(job_id, watcher)

    def unwatch(self, job_id: str, watcher: Watcher) -> None:
        """Stop telling ``watcher`` about ``job_id`` (the request or socket is gone)."""
        self.hub.unwatch(job_id, watcher)

    def resync(self) -> int:
        """Catch up with anything the bus missed; see ``Hub.resync``."""
        return self.hub.resync()

    # -- polls answered from memory (see fresh.py; gateway/polls.py decides) -------------------------

    def remembered(self, job_id: str) -> int | None:
        """The job's latest version this process has heard of, if it may answer polls from memory
        at all (its bus has a barrier and the app is serving); not yet proved current."""
        if getattr(self.bus, "barrier", None) is None or not self._serving():
            return None
        return self.hub.seen.get(job_id)

    def settle(self) -> bool:
        """Wait until every change acknowledged before the call has reached this process (the
        bus's barrier); False when it could not be proved in time."""
        barrier = getattr(self.bus, "barrier", None)
        return barrier is not None and bool(barrier.wait())

    def body_at(self, job_id: str, version: int) -> str | None:
        """The job's JSON at ``version`` if this process holds it (fresh.py)."""
        return self.hub.seen.body_at(job_id, version)

    def _serving(self) -> bool:
        return bool(getattr(self.gw.background, "running", False))

    def stop(self) -> None:
        """Stop this process's bus follower and dispatcher (the app is shutting down)."""
        self.bus.stop()
        self.hub.stop()

    def answered_from_memory(self) -> None:
        """Count a 304 that cost no database read."""
        self.polls_from_memory.inc()

    def read_job(self, job_id: str) -> tuple[Job, str] | None:
        """The job from the database, and its JSON as a poll answers it (``jobjson.job_text``);
        both are remembered if the bus listened throughout and no notice of the job came meanwhile."""
        if self._serving():
            self.start()
        seen = self.hub.seen
        epoch = seen.epoch
        token = seen.before_read(job_id)
        job = self.store.get_job(job_id)
        if job is None:
            return None
        text = job_text(job)
        seen.saw(job.id, job.version, epoch)
        seen.read(job.id, job.version, text, token)
        return job, text

    # -- long-poll ---------------------------------------------------------------------------------

    def wait_for_change(self, job_id: str, if_none_match: str, seconds: float) -> Snapshot | None:
        """The job once it no longer matches ``if_none_match``, or as it is after ``seconds``;
        None when there is no such job.

        Holds no database connection while it waits, and reads like a subscription: the first
        look is the hub's snapshot (one read per process however many long-polls ask at once,
        none while the job is watched here), the wake-up is the snapshot the notice brought."""
        box = Mailbox()
        self.watch(job_id, box)
        try:
            snap = self.hub.current(job_id)
            if snap is None:
                return None
            heard = self.hub.seen.get(job_id)
            if heard is not None and heard > snap.version:
                # a shared read that began before a change this process has already heard of
                found = self.hub.load([job_id]).get(job_id)
                snap = Snapshot(found) if found is not None else snap
            if not tag_matches(if_none_match, etag(job_id, snap.version)):
                return snap
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                news = box.wait(left)
                if news is not None and news.version > snap.version:
                    return news
            return snap
        finally:
            self.unwatch(job_id, box)


def heartbeat_seconds(config: Config) -> float:
    """``sse_heartbeat``, kept between 1 and 20 seconds (the contract's ceiling)."""
    return max(1, min(config.sse_heartbeat, 20))


def make_bus(
    name: str, hub: Hub, store: Store, redis_url: str = "redis://127.0.0.1:6379/0", *, progress_interval: float = 0.1
) -> RelayBus:
    """The bus for ``gateway.bus``: ``auto`` picks the database's own; ``redis`` is for any database."""
    dialect = store.engine.dialect.name
    if name == "auto":
        name = "postgres" if dialect == "postgresql" else "sqlite" if dialect == "sqlite" else "local"
    if name == "local":
        return LocalBus(hub)
    if name == "postgres":
        if dialect != "postgresql":
            raise ConfigError("gateway.bus: 'postgres' needs a PostgreSQL DATABASE_URL")
        from gateway.relay.bus_pg import PostgresBus

        return PostgresBus(hub, store.engine, progress_interval=progress_interval)
    if name == "sqlite":
        if dialect != "sqlite":
            raise ConfigError("gateway.bus: 'sqlite' needs a SQLite DATABASE_URL")
        from gateway.relay.bus_sqlite import SqliteBus

        return SqliteBus(hub, store.engine)
    if name == "redis":
        from gateway.relay.bus_redis import RedisBus

        return RedisBus(hub, store.engine, redis_url, progress_interval=progress_interval)
    raise ConfigError(f"gateway.bus: the {name!r} bus is not available in this installation")
