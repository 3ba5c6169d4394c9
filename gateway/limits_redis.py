"""Rate limits shared by every worker and instance through Redis: the same token buckets as
``limits.RateLimiter``, kept in Redis and updated by one Lua script, so a take is atomic and
costs one round trip. The script reads Redis's own clock (``TIME``), so hosts whose clocks
differ still share one bucket. A bucket's key expires once it would be full again.

A worker takes a small lease of tokens at a time (``lease``: 10 ms of the rate, at most 16; one
for a slow rate) and spends it locally within ``LEASE_SECONDS``: a busy key costs a round trip
per lease, not per request. The shared bucket is never overspent, since every token is taken
from it atomically; a lease left unspent expires, so a worker can at most hold back a few
milliseconds of the rate from the others.

Chosen by ``rate_limit_store`` (docs/security.md). When Redis cannot be reached the request is
allowed (the limits protect the service; they must not become its single point of failure) and
a warning is logged at most once a minute per process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any

import redis

from gateway.errors import RateLimited

log = logging.getLogger("gateway.limits")

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, tokens wanted. Returns {granted, seconds to
# wait}: as many whole tokens as the bucket holds, up to those wanted; when none, the wait for one.
TAKE = """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'seen')
local tokens, seen = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - seen) * rate)
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted >= 1 then tokens = tokens - granted else granted = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'seen', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {tostring(granted), tostring(wait)}
"""
LEASE_SECONDS = 0.05  # a leased token not spent within this is dropped (never given back)
LEASE_OF_RATE = 0.01  # a lease is 10 ms worth of the rate ...
LEASE_MAX = 16  # ... at most this many tokens
MAX_LEASES = 10_000  # keys with a lease held in this process (addresses are many): least recent dropped


class RedisRateLimiter:
    """``RateLimiter``'s interface (take, check), with the buckets in Redis under ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str, rate: float, burst: float | None = None,
                 clock: Any = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else 2 * rate)
        self.prefix = prefix
        self.lease = max(1, min(LEASE_MAX, int(self.rate * LEASE_OF_RATE), int(self.burst)))
        self.clock = clock
        self.round_trips = 0
        self._script = client.register_script(TAKE)
        self._warned_at = -math.inf
        self._leases: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (tokens left, spend by)
        self._lock = threading.Lock()

    def _from_lease(self, key: str) -> float | None:
        """This process's answer for ``key`` without Redis, if it has one: 0 when it holds an
        unexpired leased token (spent now), the remaining wait when Redis said a moment ago that
        the bucket is empty (no token can appear before then: a flood from one address costs one
        round trip per refill, not one per request); None to ask Redis."""
        with self._lock:
            left, until = self._leases.pop(key, (0, 0.0))
            now = self.clock()
            if now >= until:
                return None
            if left < 0:  # empty until ``until``
                self._leases[key] = (left, until)
                return float(until - now)
            if left > 1:
                self._leases[key] = (left - 1, until)
            return 0.0 if left >= 1 else None

    def _remember(self, key: str, left: int, until: float) -> None:
        with self._lock:
            self._leases[key] = (left, until)
            while len(self._leases) > MAX_LEASES:
                self._leases.popitem(last=False)

    def take(self, key: str) -> float:
        """Spend one token for ``key``; 0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        local = self._from_lease(key)
        if local is not None:
            return local
        try:
            self.round_trips += 1
            granted, wait = self._script(keys=[self.prefix + key], args=[self.rate, self.burst, self.lease])
            granted, wait = int(float(granted)), float(wait)
            if granted < 1:
                self._remember(key, -1, self.clock() + wait)
                return wait
            if granted > 1:
                self._remember(key, granted - 1, self.clock() + LEASE_SECONDS)
            return 0.0
        except redis.RedisError as exc:
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("shared rate limits unavailable (Redis): allowing requests", extra={"error": type(exc).__name__})
            return 0.0

    def check(self, key: str, what: str) -> None:
        """Raise RateLimited (429, Retry-After) when ``key`` is over its rate."""
        wait = self.take(key)
        if wait > 0:
            raise RateLimited(f"too many requests {what}; retry after the Retry-After seconds",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})


def client_for(url: str) -> Any:
    """A Redis client for the limits: short timeouts, so a slow Redis delays no request for long."""
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
