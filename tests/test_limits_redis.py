"""gateway.limits_redis against a real Redis: concurrent takes of one bucket never spend a token twice."""

from __future__ import annotations

import threading
import uuid

import redis

from gateway.limits_redis import RedisRateLimiter


def test_concurrent_takes_never_overspend_the_shared_bucket(redis_url: str) -> None:
    """Forty requests at once against a bucket of five: exactly five allowed (the Lua script is
    one atomic step in Redis, whichever request or worker runs it)."""
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", 0.001, 5)
    waits: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        w = limiter.take("one-address")
        with lock:
            waits.append(w)

    threads = [threading.Thread(target=take) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(waits) == 40
    assert sum(1 for w in waits if w == 0) == 5
    assert all(w > 100 for w in waits if w != 0)  # the next token is 1 / 0.001 s away
