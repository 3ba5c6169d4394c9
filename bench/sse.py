"""SSE benchmark, the relay figures of bench.relay for Server-Sent Events: ``python -m bench.sse``
prints JSON. Loopback only, about a minute and a half.

1. idle: how many subscribed, idle SSE streams one gevent worker holds and the RSS each costs;
   baseline: the naive SSE relay (bench.naive_app ``/sse``: a generator per connection waiting
   on its own queue) under the same worker.
2. fan-out: one change to 1,000 streams of one job: from the webhook POST to the last stream's
   event, and the spread first → last event; baseline: the naive relay's loop putting the
   event into 1,000 queues, triggered by one POST. The spread is the figure compared: the
   naive loop only enqueues (each stream's greenlet writes later), so its loop time alone
   would not say when the last watcher has the event.
3. latency: webhook → SSE event on another instance at a steady rate (bench.relay.latency,
   one stream per job; in make bench the same run as the WebSocket figure at 50/s on the
   PostgreSQL bus); baseline: the webhook's own acknowledgement.

Options (environment): BENCH_SSE_IDLE (10000), BENCH_FANOUT (1000), BENCH_ROUNDS (15),
BENCH_SSE_RATE (50), BENCH_SECONDS (8).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import relay
from bench.wsclient import SSESwarm
from tests.servers import Server


def idle_cost(server: Server, n: int, paths: list[str], events: bool, source: str) -> dict[str, Any]:
    """RSS per idle stream: (RSS after n more − RSS after a 50-stream warm-up) / n. ``events``:
    each stream's first event (the snapshot) is awaited before the idle period."""
    pid = server.worker_pids()[0]
    got = [0]
    swarm = SSESwarm("127.0.0.1", server.port, paths, on_text=lambda c, p, t: got.__setitem__(0, got[0] + 1), source=source)
    try:
        swarm.connect(50)
        if events:
            assert swarm.run_until(lambda: got[0] >= 50, 30)
        swarm.run_until(lambda: False, 1.0)
        before = relay.rss_kb(pid)
        t0 = time.perf_counter()
        for start in range(0, n, 1000):  # a ramp, as tabs arrive: 1,000 at a time
            swarm.connect(min(1000, n - start), batch=100, timeout=300)
        if events:
            assert swarm.run_until(lambda: got[0] >= 50 + n, 120), f"only {got[0] - 50} of {n} snapshots"
        setup = time.perf_counter() - t0
        swarm.run_until(lambda: False, 3.0)
        after = relay.rss_kb(pid)
        return {
            "streams": n,
            "alive_after_idle": sum(1 for c in swarm.conns if c.open) - 50,
            "rss_before_mb": round(before / 1024, 1),
            "rss_after_mb": round(after / 1024, 1),
            "kb_per_stream": round((after - before) / n, 2),
            "connect_and_subscribe_s": round(setup, 1),
        }
    finally:
        swarm.close()


def fanout_naive(n: int, rounds: int, message: bytes, workdir: Path) -> dict[str, Any]:
    naive = Server({}, workers=1, app="bench.naive_app:app", log_path=workdir / "naive-sse-fanout.log").start()
    try:
        swarm = SSESwarm("127.0.0.1", naive.port, ["/sse"])
        swarm.connect(n)
        conn = relay.Http(naive.port)
        deadline = time.monotonic() + 30  # the headers go out before the generator adds its queue
        while json.loads(conn.request("GET", "/count")[1])["streams"] < n and time.monotonic() < deadline:
            swarm.poll(0.05)
        loops: list[float] = []

        def broadcast(i: int) -> None:
            status, data = conn.request("POST", "/sse/broadcast", message, {"Content-Type": "application/json"})
            assert status == 200
            loops.append(json.loads(data)["seconds"])

        out = relay.fanout(swarm, n, broadcast, rounds, lambda: statistics.mean(loops))
        swarm.close()
        return out
    finally:
        naive.stop()


def run(workdir: Path, idle_n: int, fan_n: int, rounds: int, rate: int, seconds: float,
        latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every SSE figure beside its baseline; ``latency``: a bench.relay latency run that had SSE
    streams already (make bench measures both transports on the same webhooks). The idle
    streams come from their own loopback addresses (127.0.0.6 and .7), so they never wait for
    ports in TIME_WAIT."""
    if latency is None:
        latency = relay.latency("postgres", rate, seconds, workdir, bus="postgres", transports=("sse",))
    out: dict[str, Any] = {"latency": latency}
    url, drop = relay.make_database("postgres", workdir)
    b = relay.gateway_server(url, workdir, "sse-b", connections=max(idle_n, fan_n) + 2000)
    try:
        if idle_n:
            jobs = [relay.register(b.port) for _ in range(100)]
            out["idle_gateway"] = idle_cost(b, idle_n, [relay.sse_path(r) for r in jobs], True, "127.0.0.6")
        target = relay.register(b.port)
        first = [0]
        swarm = SSESwarm("127.0.0.1", b.port, [relay.sse_path(target)], on_text=lambda c, p, t: first.__setitem__(0, first[0] + 1))
        swarm.connect(fan_n)
        assert swarm.run_until(lambda: first[0] >= fan_n, 60)
        ext, base, conn_b = target["job"]["external_id"], time.time(), relay.Http(b.port)

        def trigger(i: int) -> None:
            body, headers = relay.webhook(ext, i + 1, base + i / 1000)
            assert conn_b.request("POST", "/webhooks/worker", body, headers)[0] == 200

        before = relay.fanout_metric(b.port)

        def hub_mean() -> float:
            total, count = relay.fanout_metric(b.port)
            return (total - before[0]) / max(1.0, count - before[1])

        out["fanout_gateway"] = relay.fanout(swarm, fan_n, trigger, rounds, hub_mean)
        swarm.close()
    finally:
        b.stop()
        drop()
    if idle_n:
        naive = Server({}, workers=1, app="bench.naive_app:app", extra_args=("--worker-connections", str(idle_n + 2000)),
                       log_path=workdir / "naive-sse.log").start()
        try:
            out["idle_baseline_naive"] = idle_cost(naive, idle_n, ["/sse"], False, "127.0.0.7")
        finally:
            naive.stop()
    out["fanout_baseline_naive"] = fanout_naive(fan_n, rounds, json.dumps(target["job"]).encode(), workdir)
    return out


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = run(
        Path(tempfile.mkdtemp(prefix="bench-sse-")),
        idle_n=int(os.environ.get("BENCH_SSE_IDLE", "10000")),
        fan_n=int(os.environ.get("BENCH_FANOUT", "1000")),
        rounds=int(os.environ.get("BENCH_ROUNDS", "15")),
        rate=int(os.environ.get("BENCH_SSE_RATE", "50")),
        seconds=float(os.environ.get("BENCH_SECONDS", "8")),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
