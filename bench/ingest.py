"""Ingest and polling throughput, each against its baselines in the same run: ``python -m bench.ingest``.

All servers run under the same gunicorn settings (``-k gevent``, 2 workers, the gateway's
gunicorn config) and are loaded by the same ``wrk`` (closed loop, 2 threads, C connections).

* ingest: verified, unique webhooks through the gateway's full path (verify, dedup, fold,
  commit, NOTIFY) on PostgreSQL; baselines: (a) a no-op Flask endpoint that reads the body,
  (b) the providers' docs' naive handler (SDK verify, insert, commit). Every request is a
  distinct Standard Webhooks event signed with the ``standardwebhooks`` library, pre-made
  before the clock starts; events of one job are sent in ``occurred_at`` order.
* polling: conditional ``GET /api/jobs/<id>`` answered 304 and unconditional ones answered
  200 — from the JSON the process holds (gateway/polls.py), and from a database read (a
  second gateway with ``poll_memory_jobs = 0``, as every 200 was before) — against the no-op ``GET``.

Rounds are interleaved (gateway, naive, no-op, gateway, …) and medians reported, because the
machine is shared. Options (environment): BENCH_INGEST_SECONDS (6), BENCH_ROUNDS_HTTP (3),
BENCH_CONNECTIONS (16), BENCH_JOBS (400), BENCH_BATCH_WINDOWS (none: the gateway as configured by
default; "0,2" adds it with group commit off and with a 2 ms window, each beside the baselines),
BENCH_UNPREPARED (1 adds the gateway with its statements sent as text, not prepared).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import wrk
from bench.baselines import create_naive_table
from bench.relay import CONFIG, ENV, Http, iso_at, make_database, register
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_headers

WORKERS = 2


def gateway(url: str, workdir: Path, name: str, extra_config: str = "") -> Server:
    """The gateway under gunicorn (gevent, ``WORKERS`` workers) on ``url``."""
    cfg = workdir / f"{name}.toml"
    cfg.write_text(CONFIG.replace("[sources.worker]", extra_config + "\n[sources.worker]"))
    env = {**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url}
    return Server(env, workers=WORKERS, log_path=workdir / f"{name}.log").start()


def baseline(app: str, workdir: Path, name: str, env: dict[str, str] | None = None) -> Server:
    """A baseline app under the same gunicorn settings."""
    return Server({**ENV, **(env or {})}, workers=WORKERS, app=app, log_path=workdir / f"{name}.log").start()


def signed_pool(path: str, jobs: list[dict[str, Any]], n: int, start_at: float) -> list[bytes]:
    """``n`` distinct signed webhooks (processing, rising progress), round-robin over ``jobs``;
    each job's events in ``occurred_at`` order along the pool."""
    pool = []
    for k in range(n):
        ext = jobs[k % len(jobs)]["job"]["external_id"]
        body = json.dumps({"external_id": ext, "state": "processing", "occurred_at": iso_at(start_at + k / 1000),
                           "progress": {"current": k + 1, "total": n}}).encode()
        headers = standard_headers(STANDARD_SECRET, body)
        pool.append(wrk.raw_request("POST", path, headers, body))
    return pool


def cpu_seconds(srv: Server) -> float:
    """CPU time (user + system) the server's workers have used so far."""
    total = 0
    for pid in srv.worker_pids():
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def database_cpu() -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL process on this machine (the server is local)."""
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                comm, rest = fh.read().split(" (", 1)[1].rsplit(")", 1)
        except OSError:
            continue
        if comm.startswith("postgres"):
            fields = rest.split()
            out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def measured(srv: Server, **kw: Any) -> dict[str, Any]:
    """One ``wrk`` run, with the workers' CPU per request: the cost that does not drift with
    what else the shared machine is doing (requests/s does); and PostgreSQL's (its processes
    that lived through the run)."""
    before, db_before = cpu_seconds(srv), database_cpu()
    run = wrk.run(srv.port, **kw)
    db_after = database_cpu()
    n = max(run["requests"], 1)
    run["worker_cpu_ms_per_request"] = round((cpu_seconds(srv) - before) * 1000 / n, 3)
    run["database_cpu_ms_per_request"] = round(sum(t - db_before[pid] for pid, t in db_after.items() if pid in db_before) * 1000 / n, 3)
    return run


def batches(srv: Server) -> tuple[float, float]:
    """The gateway's group commits so far, summed over its workers: (batches, webhooks in them)."""
    status, text = Http(srv.port).request("GET", "/metrics")
    assert status == 200
    found = dict(re.findall(r"^gateway_ingest_batch_size_(count|sum) ([0-9.e+]+)$", text.decode(), re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each figure over the rounds (errors summed), with every round's rate kept."""
    out: dict[str, Any] = {}
    for key in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "worker_cpu_ms_per_request", "database_cpu_ms_per_request", "mean_batch"):
        if key in runs[0]:
            out[key] = round(statistics.median(r[key] for r in runs), 2)
    for key in ("errors", "requests", "pool_wrapped"):
        out[key] = sum(r[key] for r in runs)
    out["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
    return out


def batch_windows() -> dict[str, str]:
    """The gateway as configured by default, and again with each ``ingest_batch_window_ms`` of
    BENCH_BATCH_WINDOWS (e.g. "0,2"; 0 turns group commit off), and with its statements sent as
    text (``prepare_statements = false``) when BENCH_UNPREPARED=1: server name -> [gateway] lines."""
    variants = {"gateway": ""}
    if os.environ.get("BENCH_UNPREPARED") == "1":
        variants["gateway_unprepared"] = "prepare_statements = false"
    for ms in filter(None, os.environ.get("BENCH_BATCH_WINDOWS", "").split(",")):
        variants[f"gateway_batch_window_{int(ms)}ms"] = f"ingest_batch_window_ms = {int(ms)}"
    return variants


def ingest(workdir: Path, seconds: float, rounds: int, connections: int, n_jobs: int) -> dict[str, Any]:
    """Webhooks/s through the gateway (and its variants, ``batch_windows``), the naive handler
    and the no-op endpoint. Each gateway has a database and jobs of its own."""
    naive_url, naive_drop = make_database("postgres", workdir)
    create_naive_table(naive_url)
    variants = batch_windows()
    databases = {name: make_database("postgres", workdir) for name in variants}
    servers = {name: gateway(databases[name][0], workdir, f"ingest-{name}", extra) for name, extra in variants.items()}
    servers["naive_sdk_insert_commit"] = baseline("bench.baselines:naive_app", workdir, "ingest-naive", {"BENCH_NAIVE_DATABASE_URL": naive_url})
    servers["noop_flask"] = baseline("bench.baselines:noop_app", workdir, "ingest-noop")
    try:
        jobs = {name: [register(servers[name].port) for _ in range(n_jobs)] for name in variants}
        for name in variants:
            warm = Http(servers[name].port)
            for reg in jobs[name]:  # every job processing before the clock starts
                body = json.dumps({"external_id": reg["job"]["external_id"], "state": "processing", "occurred_at": iso_at(time.time() - 3600)}).encode()
                assert warm.request("POST", "/webhooks/worker", body, standard_headers(STANDARD_SECRET, body))[0] == 200
        # enough distinct events that no run wraps around (a wrapped pool would send duplicates)
        size = int(os.environ.get("BENCH_POOL", "20000"))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
        clock = time.time() - 1800
        for r in range(rounds):
            # fresh events (and timestamps inside the providers' 5-minute tolerance) every round
            pools = {name: signed_pool("/hook", jobs[name], size, clock) for name in variants}
            clock += size / 1000 + 1
            for name, srv in servers.items():
                if name not in variants:
                    runs[name].append(measured(srv, seconds=seconds, connections=connections, pool=pools["gateway"], workdir=workdir))
                    continue
                pool = [e.replace(b"POST /hook ", b"POST /webhooks/worker ", 1) for e in pools[name]]
                before = batches(srv)
                run = measured(srv, seconds=seconds, connections=connections, pool=pool, workdir=workdir)
                after = batches(srv)
                # webhooks per commit (a batch of one when grouping is off: it is not counted then)
                run["mean_batch"] = round((after[1] - before[1]) / (after[0] - before[0]), 2) if after[0] > before[0] else 1.0
                runs[name].append(run)
        out = {name: median_of(rs) for name, rs in runs.items()}
        naive, noop = out["naive_sdk_insert_commit"]["requests_per_s"], out["noop_flask"]["requests_per_s"]
        for name in variants:
            tag = "gateway" if name == "gateway" else name
            out[f"ratio_{tag}_to_naive"] = round(out[name]["requests_per_s"] / naive, 3)
            out[f"ratio_{tag}_to_noop"] = round(out[name]["requests_per_s"] / noop, 3)
        cpu = {name: out[name]["worker_cpu_ms_per_request"] for name in servers}
        out["cpu_ratio_naive_to_gateway"] = round(cpu["naive_sdk_insert_commit"] / cpu["gateway"], 3)  # ≈ the rate ratio, without the drift
        out["setup"] = f"gunicorn -k gevent -w {WORKERS}; wrk -t2 -c{connections} -d{seconds}s, {rounds} interleaved rounds, medians; PostgreSQL; {n_jobs} jobs in processing, one distinct signed event per request"
        return out
    finally:
        for srv in servers.values():
            srv.stop()
        for _, drop in databases.values():
            drop()
        naive_drop()


def polling(workdir: Path, seconds: float, rounds: int, connections: int) -> dict[str, Any]:
    """Conditional GETs answered 304 and plain GETs answered 200 (from memory, and from the
    database), against the no-op GET."""
    url, drop = make_database("postgres", workdir)
    gw = gateway(url, workdir, "poll-gateway")
    db_reads = gateway(url, workdir, "poll-gateway-db", "poll_memory_jobs = 0")
    noop = baseline("bench.baselines:noop_app", workdir, "poll-noop")
    try:
        reg = register(gw.port)
        job, token = reg["job"], reg["token"]
        auth = {"Authorization": f"Bearer {token}"}
        status, data = Http(gw.port).request("GET", f"/api/jobs/{job['id']}", headers=auth)
        assert status == 200, data
        etag = f'"{job["id"]}.{json.loads(data)["version"]}"'
        plain = wrk.raw_request("GET", f"/api/jobs/{job['id']}", auth)
        cases = {
            "gateway_304": (gw.port, wrk.raw_request("GET", f"/api/jobs/{job['id']}", {**auth, "If-None-Match": etag}), 304),
            "gateway_200": (gw.port, plain, 200),
            "gateway_200_database": (db_reads.port, plain, 200),
            "noop_flask_get": (noop.port, wrk.raw_request("GET", "/job", {}), 200),
        }
        servers = {gw.port: gw, db_reads.port: db_reads, noop.port: noop}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, (port, req, expect) in cases.items():
                runs[name].append(measured(servers[port], seconds=seconds, connections=connections, request=req, expect=expect, workdir=workdir))
        out = {name: median_of(rs) for name, rs in runs.items()}
        out["ratio_304_to_noop"] = round(out["gateway_304"]["requests_per_s"] / out["noop_flask_get"]["requests_per_s"], 3)
        out["ratio_200_to_noop"] = round(out["gateway_200"]["requests_per_s"] / out["noop_flask_get"]["requests_per_s"], 3)
        out["ratio_200_database_to_noop"] = round(out["gateway_200_database"]["requests_per_s"] / out["noop_flask_get"]["requests_per_s"], 3)
        out["ratio_200_memory_to_database"] = round(out["gateway_200"]["requests_per_s"] / out["gateway_200_database"]["requests_per_s"], 3)
        out["poll_reads"] = {name: poll_reads(srv.port) for name, srv in (("gateway", gw), ("gateway_database", db_reads))}
        out["setup"] = f"gunicorn -k gevent -w {WORKERS}; wrk -t2 -c{connections} -d{seconds}s, {rounds} interleaved rounds, medians; job token in Authorization"
        return out
    finally:
        gw.stop()
        db_reads.stop()
        noop.stop()
        drop()


def poll_reads(port: int) -> dict[str, float]:
    """The server's ``gateway_poll_reads_total`` by ``from`` (memory, database): where the answers came from."""
    _, data = Http(port).request("GET", "/metrics")
    out: dict[str, float] = {}
    for line in data.decode().splitlines():
        if line.startswith("gateway_poll_reads_total{"):
            source = line.split('from="', 1)[1].split('"', 1)[0]
            out[source] = out.get(source, 0.0) + float(line.split()[-1])
    return out


def main() -> None:
    seconds = float(os.environ.get("BENCH_INGEST_SECONDS", "6"))
    rounds = int(os.environ.get("BENCH_ROUNDS_HTTP", "3"))
    connections = int(os.environ.get("BENCH_CONNECTIONS", "16"))
    n_jobs = int(os.environ.get("BENCH_JOBS", "400"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    which = os.environ.get("BENCH_SUITES", "ingest,polling").split(",")
    out: dict[str, Any] = {}
    if "ingest" in which:
        out["ingest"] = ingest(workdir, seconds, rounds, connections, n_jobs)
    if "polling" in which:
        out["polling"] = polling(workdir, seconds, rounds, connections)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
