"""gateway.limits_redis against a real Redis: one bucket per key, and concurrent takes of a
process sharing a round trip (a pipeline of the script's calls) without sharing tokens."""

from __future__ import annotations

import threading
import uuid

import redis

from gateway.limits_redis import RedisRateLimiter


def _limiter(redis_url: str, rate: float, burst: float) -> RedisRateLimiter:
    return RedisRateLimiter(redis.Redis.from_url(redis_url), f"test-limits-{uuid.uuid4().hex[:8]}:", rate, burst)


def test_a_pipelined_batch_charges_each_bucket_as_separate_takes_would(redis_url: str) -> None:
    """The batch path (several keys in one round trip, the script loaded by the pipeline if
    Redis lost it) spends one token per entry, in order, repeated keys included."""
    limiter = _limiter(redis_url, rate=0.001, burst=2)
    redis.Redis.from_url(redis_url).script_flush()  # the pipeline must load the script itself
    waits = limiter._take_all(["a", "b", "a", "a", "b", "c"])
    assert [w == 0 for w in waits] == [True, True, True, False, True, True]
    assert waits[3] > 100  # the third take of "a": a token comes back in 1 / 0.001 s


def test_concurrent_takes_share_round_trips_and_never_overspend(redis_url: str) -> None:
    limiter = _limiter(redis_url, rate=0.001, burst=5)
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
    assert sum(1 for w in waits if w == 0) == 5  # the burst, exactly: no token spent twice
    assert limiter.takes.calls == 40
