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


def _pair(redis_url: str, rate: float, burst: float) -> tuple[RedisRateLimiter, RedisRateLimiter]:
    """Two workers' limiters on one bucket (the same prefix in the same Redis)."""
    prefix = f"test-limits-{uuid.uuid4().hex[:8]}:"
    return (RedisRateLimiter(redis.Redis.from_url(redis_url), prefix, rate, burst),
            RedisRateLimiter(redis.Redis.from_url(redis_url), prefix, rate, burst))


def test_a_busy_key_costs_a_round_trip_per_lease_not_per_request(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", 1000, 2000)
    assert limiter.lease == 10  # 10 ms of 1,000 a second
    assert all(limiter.take("busy") == 0 for _ in range(100))
    assert limiter.round_trips == 10


def test_leases_never_overspend_a_bucket_shared_by_two_workers(redis_url: str) -> None:
    """Two workers taking leases of 10 from one bucket of 25 that does not refill during the test:
    never more than 25 requests allowed between them (a lease is taken from the bucket, atomically)."""
    a, b = _pair(redis_url, rate=0.001, burst=25)
    a.lease = b.lease = 10
    answers = [(a if i % 3 else b).take("shared") for i in range(200)]
    allowed = sum(1 for w in answers if w == 0)
    assert allowed <= 25
    assert allowed >= 25 - a.lease - b.lease  # only a lease that expired unspent is lost
    assert a.round_trips + b.round_trips < 200


def test_a_lease_not_spent_in_time_is_dropped_and_a_slow_rate_takes_one_token_at_a_time(redis_url: str) -> None:
    now = [100.0]
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", 1000, 2000, clock=lambda: now[0])
    assert limiter.take("k") == 0 and limiter.round_trips == 1  # leased 10, spent 1
    assert limiter.take("k") == 0 and limiter.round_trips == 1  # from the lease
    now[0] += 1.0  # past LEASE_SECONDS: the 8 left are dropped
    assert limiter.take("k") == 0 and limiter.round_trips == 2
    slow = RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", 1, 2)
    assert slow.lease == 1
    assert [slow.take("k") == 0 for _ in range(3)] == [True, True, False] and slow.round_trips == 3


def test_an_empty_bucket_is_remembered_until_its_next_token(redis_url: str) -> None:
    """A flood from one address: once Redis says the bucket is empty, the worker answers 429 on
    its own until a token can have come back, then asks again."""
    now = [100.0]
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", 1, 1, clock=lambda: now[0])
    assert limiter.take("flood") == 0
    first = limiter.take("flood")
    assert 0 < first <= 1 and limiter.round_trips == 2
    waits = [limiter.take("flood") for _ in range(50)]
    assert all(0 < w <= first for w in waits) and limiter.round_trips == 2
    now[0] += first + 0.01  # the worker's clock says a token may be back: Redis decides
    limiter.take("flood")
    assert limiter.round_trips == 3
