"""Redis-backed rate limits, per take: ``python -m bench.limits``.

One process, no gevent, the shared Redis: CPU per ``take`` and Redis round trips, for a busy key
under its limit and for a flood over it, with leases (the gateway) and with every take asking
Redis (the limiter as it was, the baseline), in the same run. Options: BENCH_LIMITS_N (5000)."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import redis

from gateway.limits_redis import RedisRateLimiter

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def run(limiter: RedisRateLimiter, n: int) -> dict[str, Any]:
    """``n`` takes of one key after 50 unmeasured: CPU per take, round trips, takes allowed."""
    for _ in range(50):
        limiter.take("k")
    trips, cpu = limiter.round_trips, time.process_time()
    allowed = sum(1 for _ in range(n) if limiter.take("k") == 0)
    return {"cpu_us_per_take": round((time.process_time() - cpu) / n * 1e6, 1), "round_trips": limiter.round_trips - trips, "takes": n, "allowed": allowed}


def main() -> None:
    n = int(os.environ.get("BENCH_LIMITS_N", "5000"))
    client = redis.Redis.from_url(REDIS_URL)

    def limiter(rate: float, burst: float, leased: bool) -> RedisRateLimiter:
        lim = RedisRateLimiter(client, f"bench-limits-{uuid.uuid4().hex[:8]}:", rate, burst)
        if not leased:
            lim.lease = 1
            lim._from_lease = lambda key: None  # type: ignore[method-assign]  # the baseline: every take asks Redis
        return lim

    out = {
        "busy_key_under_a_high_limit": {"leases": run(limiter(10**6, 2 * 10**6, True), n), "every_take_asks_redis": run(limiter(10**6, 2 * 10**6, False), n)},
        "flood_over_10_per_s": {"leases": run(limiter(10, 20, True), n), "every_take_asks_redis": run(limiter(10, 20, False), n)},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
