"""Relay benchmark: ``python -m bench.relay`` prints JSON. Loopback only, a few minutes at most.

1. latency: webhook → WebSocket, webhooks POSTed to instance A (1 gevent worker), watchers on
   instance B (1 gevent worker), at a steady rate; p50/p99 of (frame received − POST sent).
   Baseline in the same run: the webhook's own acknowledgement time (POST → 200).
2. idle: how many subscribed, idle WebSocket watchers one gevent worker holds and the RSS each
   costs; baseline: the naive flask-sock relay (bench.naive_app) under the same worker.
3. fan-out: one change to 1,000 watchers of one job: from the webhook POST to the last
   watcher's frame, and the spread first → last frame; baseline: the naive relay's loop of
   ``ws.send`` over 1,000 sockets, triggered by one POST.

Options (environment): BENCH_RATES (webhooks/s, "50,500"), BENCH_SECONDS (8), BENCH_IDLE (10000),
BENCH_FANOUT (1000), BENCH_ROUNDS (20), BENCH_BACKENDS ("postgres,sqlite").
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import resource
import selectors
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from bench.wsclient import SSESwarm, Swarm, job_of
from gateway.migrate import upgrade
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_headers

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "bench-api-key-0123456789"
ENV = {
    "GATEWAY_SECRET_KEY": "bench-secret-key-0123456789abcdef",
    "GATEWAY_API_KEYS": API_KEY,
    "WORKER_SECRETS": STANDARD_SECRET,
    "GATEWAY_LOG_LEVEL": "WARNING",
}
CONFIG = """
[gateway]
allowed_origins = ["http://127.0.0.1"]
ws_max_subscriptions = 100
# thousands of sockets from one loopback address: the per-address abuse limits are off here
max_connections_per_address = 0
rate_limit_public_per_address = 0
# the webhook limits stay on (their cost is measured) but above what one load generator sends:
# at the default 1,000 per second per source a faster gateway would answer 429s
rate_limit_webhooks_per_source = 100000
rate_limit_webhooks_per_address = 100000

[sources.worker]
adapter = "standard"
secrets_env = "WORKER_SECRETS"
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 2)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def iso_at(t: float) -> str:
    from datetime import datetime

    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Http:
    """A keep-alive HTTP/1.1 connection (http.client: little client CPU per request). One the
    server closed while idle (gunicorn's keep-alive timeout) is opened again, once per request."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
        except ConnectionError:  # closed by the server while idle; nothing was answered
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
        return r.status, r.read()


def register(port: int, queue: str | None = None) -> dict[str, Any]:
    body = {"source": "worker", "external_id": "bench-" + uuid.uuid4().hex[:12]}
    if queue is not None:
        body["queue"] = queue
    status, data = Http(port).request("POST", "/api/jobs", json.dumps(body).encode(), {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert status in (200, 201), data
    return json.loads(data)


def webhook(external_id: str, current: int, at: float) -> tuple[bytes, dict[str, str]]:
    """A signed `standard` webhook: processing with progress ``current``."""
    body = json.dumps({"external_id": external_id, "state": "processing", "occurred_at": iso_at(at), "progress": {"current": current, "total": 10**9}})
    return body.encode(), standard_headers(STANDARD_SECRET, body)


def subscribe_msg(reg: dict[str, Any]) -> str:
    return json.dumps({"type": "subscribe", "job": reg["job"]["id"], "token": reg["token"]})


def sse_path(reg: dict[str, Any]) -> str:
    return f"/api/jobs/{reg['job']['id']}/stream?token={reg['token']}"


# -- databases and servers --------------------------------------------------------------------------------


def make_database(backend: str, workdir: Path) -> tuple[str, Any]:
    if backend == "postgres":
        name = f"gw_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = "postgresql+psycopg://" + ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name

        def drop() -> None:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        url = f"sqlite:///{workdir}/bench-{uuid.uuid4().hex[:6]}.db"

        def drop() -> None:
            pass

    upgrade(url)
    return url, drop


def gateway_server(url: str, workdir: Path, name: str, connections: int = 2000, bus: str | None = None, workers: int = 1) -> Server:
    cfg = workdir / f"{name}.toml"
    bus = bus or os.environ.get("BENCH_BUS")
    cfg.write_text(CONFIG.replace("[sources.worker]", f'bus = "{bus}"\n\n[sources.worker]') if bus else CONFIG)
    env = {**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url}
    return Server(env, workers=workers, extra_args=("--worker-connections", str(connections)), log_path=workdir / f"{name}.log").start()


# -- 1. latency under a steady webhook load -------------------------------------------------------------------


def _receiver(port: int, subs: dict[str, list[Any]], ready: Any, stop: Any, out: Any) -> None:
    """Child process: watchers on B; records (progress.current, arrival time) of every frame
    (every SSE event), per transport. ``subs["ws"]`` holds each WebSocket's subscribe messages,
    ``subs["sse"]`` the path of each stream. One selector waits on every swarm's."""
    arrivals: dict[str, dict[int, float]] = {t: {} for t in subs}
    swarms: list[Swarm] = []

    def on_text(transport: str) -> Any:
        def record(conn: Any, payload: bytes, now: float) -> None:
            job = json.loads(payload) if transport == "sse" else job_of(payload)
            if job and job.get("progress"):
                arrivals[transport].setdefault(job["progress"]["current"], now)

        return record

    if "sse" in subs:
        swarms.append(SSESwarm("127.0.0.1", port, subs["sse"], on_text=on_text("sse")))
        swarms[-1].connect(len(subs["sse"]))
    if "ws" in subs:
        swarms.append(Swarm("127.0.0.1", port, on_text=on_text("ws")))
        conns = swarms[-1].connect(len(subs["ws"]))
        for conn, msgs in zip(conns, subs["ws"]):
            for m in msgs:
                swarms[-1].send_text(conn, m)
    both = selectors.DefaultSelector()
    for swarm in swarms:
        both.register(swarm.sel, selectors.EVENT_READ, swarm)

    def run(seconds: float, until: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until.is_set()):
            for key, _ in both.select(0.05):
                key.data.poll(0)

    run(1.0)
    ready.set()
    run(3600, stop)
    run(1.0)
    out.send(arrivals)
    for swarm in swarms:
        swarm.close()


@dataclass
class Paced:
    """What ``paced_posts`` saw: per webhook number (1-based) when it was sent and acknowledged."""

    sent: dict[int, float]
    acked: dict[int, float]
    acks: list[float]
    errors: int
    elapsed: float


def paced_posts(port: int, path: str, prepared: list[tuple[bytes, dict[str, str]]], rate: float, seconds: float,
                threads: int = 16) -> Paced:
    """POST ``prepared[k]`` at ``start + k / rate`` from ``threads`` keep-alive connections, for at
    most ``seconds`` (+2): an overloaded server bounds the run in time, not in count. Only 200s
    count as sent."""
    out = Paced({}, {}, [], 0, 0.0)
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def sender(t: int) -> None:
        http_ = Http(port)
        for k in range(t, len(prepared), threads):
            if time.perf_counter() > start + seconds + 2:
                break
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body, headers = prepared[k]
            t0 = time.perf_counter()
            try:
                status, _ = http_.request("POST", path, body, headers)
            except OSError:
                status = 0
                http_ = Http(port)
            t1 = time.perf_counter()
            with lock:
                if status != 200:
                    out.errors += 1
                    continue
                out.sent[k + 1], out.acked[k + 1] = t0, t1
                out.acks.append(t1 - t0)

    pool = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    out.elapsed = time.perf_counter() - start
    return out


def latency(backend: str, rate: int, seconds: float, workdir: Path, bus: str | None = None,
            transports: tuple[str, ...] = ("ws",)) -> dict[str, Any]:
    """``bus="local"``: the same load with no cross-process bus, the ingest ceiling without the relay.
    ``transports``: "ws" (ten WebSockets watching five jobs each) and/or "sse" (one stream per
    job), the same webhooks reaching both."""
    url, drop = make_database(backend, workdir)
    a = gateway_server(url, workdir, f"latency-{backend}-{rate}-a", bus=bus)
    b = gateway_server(url, workdir, f"latency-{backend}-{rate}-b", bus=bus)
    try:
        # at most 2.5 webhooks per job a second: the figure is the relay's, not the progress
        # coalescing's (a job's progress is announced at most every progress_interval_ms, 100 ms,
        # which the storm suite measures); 50 jobs at 500/s put each at that limit
        jobs = [register(a.port) for _ in range(max(50, rate // 2))]
        warm = Http(a.port)
        for reg in jobs:  # every job processing before the clock starts: no queue moves under load
            body, headers = webhook(reg["job"]["external_id"], 0, time.time() - 60)
            assert warm.request("POST", "/webhooks/worker", body, headers)[0] == 200
        subs: dict[str, list[Any]] = {}
        if "ws" in transports:
            subs["ws"] = [[subscribe_msg(r) for r in jobs[i::10]] for i in range(10)]
        if "sse" in transports:
            subs["sse"] = [sse_path(r) for r in jobs]
        ready, stop = mp.Event(), mp.Event()
        parent, child = mp.Pipe()
        proc = mp.Process(target=_receiver, args=(b.port, subs, ready, stop, child), daemon=True)
        proc.start()
        assert ready.wait(60), "receiver did not start"
        total = int(rate * seconds)
        base = time.time()
        prepared = []
        for k in range(total):
            reg = jobs[k % len(jobs)]
            prepared.append(webhook(reg["job"]["external_id"], k + 1, base + k / rate / 10))
        paced = paced_posts(a.port, "/webhooks/worker", prepared, rate, seconds)
        sent, acked, acks, errors, elapsed = paced.sent, paced.acked, paced.acks, paced.errors, paced.elapsed
        stop.set()
        arrivals = parent.recv()
        proc.join(10)
        result: dict[str, Any] = {
            "backend": backend,
            "bus": bus or "auto",
            "transports": list(transports),
            "target_rate_per_s": rate,
            "achieved_rate_per_s": round(len(sent) / elapsed, 1),
            "webhooks_scheduled": total,
            "webhooks_acknowledged": len(sent),
            "webhook_errors": errors,
            "note": "frames for versions superseded before the read are coalesced into the newer one",
            "baseline_webhook_ack_ms": {"p50": ms(percentile(acks, 50)), "p99": ms(percentile(acks, 99))} if acks else None,
        }
        for transport, got in arrivals.items():
            lat = [got[k] - sent[k] for k in sent if k in got]
            after_ack = [got[k] - acked[k] for k in sent if k in got]
            arrived = "ws_frame" if transport == "ws" else "sse_event"
            result[f"{arrived}s_matched"] = len(lat)
            result[f"webhook_to_{transport}_ms"] = {
                "p50": ms(percentile(lat, 50)), "p90": ms(percentile(lat, 90)), "p99": ms(percentile(lat, 99)), "max": ms(max(lat))
            } if lat else None
            result[f"{arrived}_minus_ack_ms"] = {"p50": ms(percentile(after_ack, 50)), "p99": ms(percentile(after_ack, 99))} if after_ack else None
        return result
    finally:
        a.stop()
        b.stop()
        drop()


# -- 2. idle watchers per worker ----------------------------------------------------------------------------------


def idle_cost(server: Server, n: int, subscribe: list[str] | None) -> dict[str, Any]:
    """RSS per idle watcher: (RSS after n more − RSS after a 50-connection warm-up) / n."""
    pid = server.worker_pids()[0]
    got = [0]
    swarm = Swarm("127.0.0.1", server.port, on_text=lambda c, p, t: got.__setitem__(0, got[0] + 1))
    try:
        warm = swarm.connect(50)
        if subscribe:
            for i, conn in enumerate(warm):
                swarm.send_text(conn, subscribe[i % len(subscribe)])
            assert swarm.run_until(lambda: got[0] >= 50, 30)
        swarm.run_until(lambda: False, 1.0)
        before = rss_kb(pid)
        t0 = time.perf_counter()
        conns = swarm.connect(n, timeout=300)
        if subscribe:
            for i, conn in enumerate(conns):
                swarm.send_text(conn, subscribe[i % len(subscribe)])
            assert swarm.run_until(lambda: got[0] >= 50 + n, 120), f"only {got[0] - 50} of {n} snapshots"
        setup = time.perf_counter() - t0
        swarm.run_until(lambda: False, 3.0)
        after = rss_kb(pid)
        alive = sum(1 for c in swarm.conns if c.open)
        return {
            "watchers": n,
            "alive_after_idle": alive - 50,
            "rss_before_mb": round(before / 1024, 1),
            "rss_after_mb": round(after / 1024, 1),
            "kb_per_watcher": round((after - before) / n, 2),
            "connect_and_subscribe_s": round(setup, 1),
        }
    finally:
        swarm.close()


def _idle_client(port: int, source: str, n: int, subscribe: list[str] | None, ready: Any, stop: Any, out: Any) -> None:
    """Child process: ``n`` idle watchers from ``source``; reports how many are still open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    got = [0]
    swarm = Swarm("127.0.0.1", port, on_text=lambda c, p, t: got.__setitem__(0, got[0] + 1), source=source)
    try:
        conns = []
        for start in range(0, n, 1000):  # a ramp, as tabs arrive: 1,000 at a time, each subscribed
            batch = swarm.connect(min(1000, n - start), batch=50, timeout=300)
            if subscribe:
                for i, conn in enumerate(batch):
                    swarm.send_text(conn, subscribe[(start + i) % len(subscribe)])
            conns += batch
        if subscribe:
            ok = swarm.run_until(lambda: got[0] >= n, 180)
        else:
            ok = True
        ready.set()
        while not stop.is_set():
            swarm.poll(0.1)
        out.send({"ok": ok, "snapshots": got[0], "alive": sum(1 for c in swarm.conns if c.open)})
    except Exception as exc:
        ready.set()
        out.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "alive": sum(1 for c in swarm.conns if c.open)})
    finally:
        swarm.close()


def idle_across_workers(server: Server, n: int, subscribe: list[str] | None, clients: int = 2, first_address: int = 2) -> dict[str, Any]:
    """``n`` idle watchers on a multi-worker server, from ``clients`` processes (each from its own
    loopback address, 127.0.0.<first_address + i>, and under its own descriptor limit); RSS per
    watcher summed over the workers. A later run takes fresh addresses: closed connections keep
    their ports in TIME_WAIT for a minute."""
    pids = server.worker_pids()
    before = {pid: rss_kb(pid) for pid in pids}
    fds_before = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids}
    procs, pipes, stop = [], [], mp.Event()
    t0 = time.perf_counter()
    for i in range(clients):
        ready = mp.Event()
        parent, child = mp.Pipe()
        p = mp.Process(target=_idle_client, args=(server.port, f"127.0.0.{first_address + i}", n // clients, subscribe, ready, stop, child), daemon=True)
        p.start()
        procs.append((p, ready))
        pipes.append(parent)
    for p, ready in procs:
        ready.wait(400)
    setup = time.perf_counter() - t0
    time.sleep(3.0)  # idle: let the workers settle before reading RSS
    alive_pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    after = {pid: rss_kb(pid) for pid in alive_pids}
    fds = {pid: len(os.listdir(f"/proc/{pid}/fd")) - fds_before[pid] for pid in alive_pids}
    stop.set()
    reports = [pipe.recv() for pipe in pipes]
    for p, _ in procs:
        p.join(30)
    alive = sum(r["alive"] for r in reports)
    grown = sum(after.values()) - sum(before[pid] for pid in alive_pids)
    return {
        "watchers": n,
        "workers": len(pids),
        "workers_lost": len(pids) - len(alive_pids),
        "alive_after_idle": alive,
        "all_subscribed": all(r["ok"] for r in reports),
        "errors": [r["error"] for r in reports if "error" in r],
        "connections_per_worker": sorted(fds.values()),
        "rss_before_mb": round(sum(before.values()) / 1024, 1),
        "rss_after_mb": round(sum(after.values()) / 1024, 1),
        "kb_per_watcher": round(grown / max(1, alive), 2),
        "connect_and_subscribe_s": round(setup, 1),
    }


def capacity_two_workers(n: int, workdir: Path) -> dict[str, Any]:
    """``n`` idle, subscribed watchers on one gateway instance with two gevent workers, and ``n``
    idle sockets on the naive relay under the same two workers: memory per watcher side by side."""
    out: dict[str, Any] = {}
    url, drop = make_database("postgres", workdir)
    cfg = workdir / "capacity2.toml"
    cfg.write_text(CONFIG)
    args = ("--worker-connections", str(n + 2000))
    gw = Server({**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url}, workers=2, extra_args=args, log_path=workdir / "capacity2.log").start()
    try:
        jobs = [register(gw.port) for _ in range(100)]
        out["idle_gateway_two_workers"] = idle_across_workers(gw, n, [subscribe_msg(r) for r in jobs])
    finally:
        gw.stop()
        drop()
    naive = Server({"NAIVE_PING_INTERVAL": "25"}, workers=2, app="bench.naive_app:app", extra_args=args, log_path=workdir / "naive2.log").start()
    try:
        out["idle_naive_two_workers"] = idle_across_workers(naive, n, None, first_address=4)
    finally:
        naive.stop()
    return out


# -- 3. fan-out of one change -------------------------------------------------------------------------------------------


def fanout_metric(port: int) -> tuple[float, float]:
    """(sum, count) of the gateway worker's ``gateway_relay_fanout_seconds``."""
    text = Http(port).request("GET", "/metrics")[1].decode()
    values = {}
    for line in text.splitlines():
        for key in ("gateway_relay_fanout_seconds_sum", "gateway_relay_fanout_seconds_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    return values["gateway_relay_fanout_seconds_sum"], values["gateway_relay_fanout_seconds_count"]


def fanout(swarm: Swarm, n: int, trigger: Any, rounds: int, server_side: Any = None) -> dict[str, Any]:
    """``trigger(i)`` causes one frame on each of ``n`` sockets; time to the last one, and the spread.
    ``server_side()`` → seconds the server spent in its send loop over the rounds (mean)."""
    totals, spreads = [], []
    for i in range(rounds):
        times: list[float] = []
        swarm.on_text = lambda c, p, now: times.append(now)
        t0 = time.perf_counter()
        th = threading.Thread(target=trigger, args=(i,))
        th.start()
        assert swarm.run_until(lambda: len(times) >= n, 30), f"round {i}: {len(times)} of {n} frames"
        th.join()
        totals.append(max(times) - t0)
        spreads.append(max(times) - min(times))
        swarm.run_until(lambda: False, 0.05)
    return {
        "watchers": n,
        "rounds": rounds,
        "server_send_loop_mean_ms": ms(server_side()) if server_side else None,
        "trigger_to_last_ms": {"p50": ms(statistics.median(totals)), "max": ms(max(totals))},
        "first_to_last_ms": {"p50": ms(statistics.median(spreads)), "max": ms(max(spreads))},
    }


def capacity_and_fanout(idle_n: int, fan_n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url, drop = make_database("postgres", workdir)
    a = gateway_server(url, workdir, "fanout-a")
    b = gateway_server(url, workdir, "capacity-b", connections=idle_n + 2000)
    naive = Server({"NAIVE_PING_INTERVAL": "25"}, workers=1, app="bench.naive_app:app",
                   extra_args=("--worker-connections", str(idle_n + 2000)), log_path=workdir / "naive.log").start()
    try:
        if idle_n:
            jobs = [register(b.port) for _ in range(100)]
            out["idle_gateway"] = idle_cost(b, idle_n, [subscribe_msg(r) for r in jobs])
            out["idle_baseline_naive_flask_sock"] = idle_cost(naive, idle_n, None)

        target = register(a.port)
        first = [0]
        swarm = Swarm("127.0.0.1", b.port, on_text=lambda c, p, t: first.__setitem__(0, first[0] + 1))
        conns = swarm.connect(fan_n)
        for conn in conns:
            swarm.send_text(conn, subscribe_msg(target))
        assert swarm.run_until(lambda: first[0] >= fan_n, 60)
        ext = target["job"]["external_id"]
        base = time.time()
        conn_a, conn_b = Http(a.port), Http(b.port)

        def via(conn: Http, offset: int) -> Any:
            def trigger(i: int) -> None:
                body, headers = webhook(ext, offset + i + 1, base + (offset + i) / 1000)
                status, _ = conn.request("POST", "/webhooks/worker", body, headers)
                assert status == 200

            return trigger

        def hub_mean(before: tuple[float, float]) -> Any:
            def mean() -> float:
                total, count = fanout_metric(b.port)
                return (total - before[0]) / max(1.0, count - before[1])

            return mean

        out["fanout_gateway_webhook_to_same_worker"] = fanout(swarm, fan_n, via(conn_b, 0), rounds, hub_mean(fanout_metric(b.port)))
        out["fanout_gateway_webhook_to_other_instance"] = fanout(swarm, fan_n, via(conn_a, 1000), rounds, hub_mean(fanout_metric(b.port)))
        swarm.close()

        naive.stop()  # a fresh naive worker for its fan-out, as the gateway's B had its idle sockets closed
        naive = Server({"NAIVE_PING_INTERVAL": "25"}, workers=1, app="bench.naive_app:app", log_path=workdir / "naive-fanout.log").start()
        nswarm = Swarm("127.0.0.1", naive.port)
        nswarm.connect(fan_n)
        conn_n = Http(naive.port)
        deadline = time.monotonic() + 30  # the 101 goes out before the handler adds the socket to its set
        while json.loads(conn_n.request("GET", "/count")[1])["sockets"] < fan_n and time.monotonic() < deadline:
            nswarm.poll(0.05)
        message = json.dumps({"type": "job", "job": target["job"]}).encode()

        loops: list[float] = []

        def broadcast(i: int) -> None:
            status, data = conn_n.request("POST", "/broadcast", message, {"Content-Type": "application/json"})
            assert status == 200
            loops.append(json.loads(data)["seconds"])

        out["fanout_baseline_naive_flask_sock"] = fanout(nswarm, fan_n, broadcast, rounds, lambda: statistics.mean(loops))
        nswarm.close()
    finally:
        a.stop()
        b.stop()
        naive.stop()
        drop()
    return out


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rates = [int(r) for r in os.environ.get("BENCH_RATES", "50,500").split(",") if r]
    seconds = float(os.environ.get("BENCH_SECONDS", "8"))
    idle_n = int(os.environ.get("BENCH_IDLE", "10000"))
    fan_n = int(os.environ.get("BENCH_FANOUT", "1000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "20"))
    backends = os.environ.get("BENCH_BACKENDS", "postgres,sqlite").split(",")
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "nofile": hard, "python": sys.version.split()[0]},
        "setup": "gunicorn -k gevent, 1 worker per instance, loopback; clients in separate processes",
    }
    results["latency"] = [latency(b, rate, seconds, workdir) for b in backends if b for rate in rates]
    # baseline: the same top rate on PostgreSQL with the process-local bus (no NOTIFY, no cross-process frames)
    results["baseline_ingest_without_relay_bus"] = latency("postgres", max(rates), seconds, workdir, bus="local")
    results.update(capacity_and_fanout(idle_n, fan_n, rounds, workdir))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
