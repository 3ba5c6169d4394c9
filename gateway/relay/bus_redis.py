"""Redis pub/sub: the fan-out bus for deployments whose write rate outgrows PostgreSQL NOTIFY.

PostgreSQL serialises every committing transaction that issued NOTIFY on one global lock
(the notification queue), so at high write rates NOTIFY becomes the ceiling. With
``[gateway] bus = "redis"`` the database only commits; the change notices travel over Redis,
each with the job's JSON (polls are then answered from memory, relay/fresh.py).

Redis is not transactional with the database, so a notice is published in ``published`` —
after the commit, never before (a watcher must never read a version that is not there yet).
A publish lost in between (Redis restarting, the process dying after commit) is caught up by
the hub's resync, as is anything sent while this process's subscriber was disconnected: each
(re)subscription asks the hub to resync.

The channel is named for the database (``gateway_jobs:<host>:<port>/<database>``), so several
deployments — or test runs — can share one Redis without seeing each other's notices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from sqlalchemy import Engine

from gateway.relay.bus import ListeningBus, notices
from gateway.relay.coalesce import Coalescer
from gateway.relay.fresh import Barrier
from gateway.relay.hub import Hub
from gateway.store import Change, Unit

log = logging.getLogger("gateway.relay")

CHANNEL_PREFIX = "gateway_jobs"
SUBSCRIBER_NAME = "gateway-relay-subscriber"  # CLIENT SETNAME: operators (and tests) can find it
MESSAGE_LIMIT = 512 * 1024  # bytes per message: a job's JSON travels with its notice up to this size


def channel_for(engine: Engine) -> str:
    """One channel per database: ``gateway_jobs:<host>:<port>/<database>``."""
    url = engine.url
    return f"{CHANNEL_PREFIX}:{url.host or ''}:{url.port or ''}/{url.database or ''}"


class RedisBus(ListeningBus):
    """Redis pub/sub between processes and hosts, plus the local bus for this process."""

    name = "redis"
    thread_name = "gateway-relay-redis"
    what = "Redis subscriber"

    def __init__(self, hub: Hub, engine: Engine, redis_url: str, *, max_backoff: float = 10.0, progress_interval: float = 0.1):
        super().__init__(hub, max_backoff=max_backoff)
        self.redis_url = redis_url
        self.channel = channel_for(engine)
        self.subscriptions = 0  # confirmed (re)subscriptions: each one resyncs
        self._client: redis.Redis | None = None
        self.barrier = Barrier(self._publish_marker)
        self.coalescer = Coalescer(self._announce, progress_interval)

    def _publish_marker(self, marker: str) -> None:
        self._publisher().publish(self.channel, marker)

    def _publisher(self) -> redis.Redis:
        # created lazily in the worker (after the fork): no connection crosses a fork
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        return self._client

    def publish_in_transaction(self, writer: Unit, changes: Sequence[Change]) -> None:
        """Nothing inside the transaction: Redis cannot take part in the commit."""

    def published(self, changes: Sequence[Change]) -> None:
        """After commit: this process's hub at once, every other process through Redis.

        A failed publish is logged, not raised: the change is committed and acknowledged,
        and the other processes' resync will carry it."""
        self._announce(self.coalescer.split(changes))

    def _announce(self, changes: Sequence[Change]) -> None:
        """This process's hub, then every other process through Redis (progress of a storming
        job is held by the coalescer and comes here once per interval)."""
        if not changes:
            return
        super().published(changes)
        try:
            pipe = self._publisher().pipeline(transaction=False)  # one round trip, in order
            for payload in notices(changes, limit=MESSAGE_LIMIT):
                pipe.publish(self.channel, payload)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("relay: could not publish to Redis; the resync will catch up", extra={"error": type(exc).__name__})

    def _listen(self) -> None:
        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=15,
            retry_on_timeout=False, retry=None, client_name=SUBSCRIBER_NAME,
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # the first subscription, or redis-py's own resubscription after a
                    # reconnect: anything published meanwhile was lost to us
                    self.subscriptions += 1
                    self.hub.seen.reset(live=True)
                    self.connected.set()
                    self.hub.resync()
                elif message["type"] == "message":
                    data = message["data"]
                    self._deliver(data.decode() if isinstance(data, bytes) else data)
        finally:
            self.connected.clear()
            self.hub.seen.reset(live=False)
            pubsub.close()
            client.close()
