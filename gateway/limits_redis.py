"""Rate limits shared by every worker and instance through Redis: the same token buckets as
``limits.RateLimiter``, kept in Redis and updated by one Lua script, so a take is atomic and
costs one round trip. The script reads Redis's own clock (``TIME``), so hosts whose clocks
differ still share one bucket. A bucket's key expires once it would be full again.

Chosen by ``rate_limit_store`` (docs/security.md). When Redis cannot be reached the request is
allowed (the limits protect the service; they must not become its single point of failure) and
a warning is logged at most once a minute per process.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis

from gateway.errors import RateLimited

log = logging.getLogger("gateway.limits")

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns the seconds to wait (0: allowed).
TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'seen')
local tokens, seen = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - seen) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'seen', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """``RateLimiter``'s interface (take, check), with the buckets in Redis under ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else 2 * rate)
        self.prefix = prefix
        self._script = client.register_script(TAKE)
        self._warned_at = -math.inf

    def take(self, key: str) -> float:
        """Spend one token for ``key``; 0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        try:
            return float(self._script(keys=[self.prefix + key], args=[self.rate, self.burst]))
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
