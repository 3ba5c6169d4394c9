"""Pipeline benchmark: ``python -m bench.pipeline`` prints JSON. Loopback only, about a minute.

Webhook → WebSocket frame latency on ONE instance at a steady rate, with many watchers per job:
webhooks are POSTed to the instance the watchers are subscribed on, 1,000 watchers spread over 50
jobs (20 per job), the webhooks round-robin over the 50 jobs, every job moved to processing before
the clock starts. For each webhook: its acknowledgement (POST → 200) and the arrival of its frame
on each of the job's 20 watchers (frame arrival − POST sent): p50/p90/p99/max over every frame.

* gateway: one gunicorn instance with 2 gevent workers (the watchers land on both; a webhook
  taken by one worker reaches the other's watchers over the PostgreSQL bus), PostgreSQL;
  ``POST /webhooks/worker`` (Standard Webhooks), watchers subscribed over ``/ws``.
* baseline, in the same run: the naive pipeline (``bench.baselines:naive_pipeline_app``): a
  flask-sock app whose ``POST /hook`` verifies with the ``standardwebhooks`` SDK, INSERTs the
  event, COMMITs, then loops ``ws.send`` over that job's sockets in the same process; one
  gunicorn process with 1 gevent worker (a naive pipeline cannot share sockets across workers),
  the same PostgreSQL, the same watchers and the same rate.

The issue's aim: gateway p50 ≤ 10 ms and p99 ≤ 40 ms, and no worse than the naive pipeline
(``ratio_gateway_to_naive_p50`` / ``_p99`` ≤ 1).

Options (environment): BENCH_PIPELINE_RATE (webhooks/s, 200), BENCH_PIPELINE_SECONDS (8 per side),
BENCH_PIPELINE_WATCHERS (1000), BENCH_PIPELINE_JOBS (50).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.baselines import create_naive_table
from bench.relay import Http, gateway_server, make_database, ms, paced_posts, percentile, register, subscribe_msg, webhook
from bench.wsclient import Swarm, job_of
from tests.servers import Server
from tests.signing import STANDARD_SECRET


def _watchers(port: int, subscribe: list[str], ready: Any, stop: Any, out: Any) -> None:
    """Child process: one WebSocket per subscribe message; records the arrival time of every
    frame carrying a progress version (``progress.current``), on every socket. Ready once every
    socket has had its first frame (the gateway's snapshot, the naive app's ``subscribed``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    arrivals: dict[int, list[float]] = {}
    greeted: set[int] = set()

    def record(conn: Any, payload: bytes, now: float) -> None:
        greeted.add(id(conn))
        job = job_of(payload)
        if job and job.get("progress"):
            arrivals.setdefault(job["progress"]["current"], []).append(now)

    swarm = Swarm("127.0.0.1", port, on_text=record)
    try:
        conns = swarm.connect(len(subscribe))
        for conn, msg in zip(conns, subscribe):
            swarm.send_text(conn, msg)
        ok = swarm.run_until(lambda: len(greeted) >= len(subscribe), 60)
        ready.set()
        while not stop.is_set():
            swarm.poll(0.05)
        swarm.run_until(lambda: False, 1.0)  # frames still in flight after the last POST
        out.send({"ok": ok, "greeted": len(greeted), "alive": sum(1 for c in swarm.conns if c.open), "arrivals": arrivals})
    except Exception as exc:
        ready.set()
        out.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "arrivals": arrivals})
    finally:
        swarm.close()


def fds(pids: list[int]) -> dict[int, int]:
    return {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids if os.path.exists(f"/proc/{pid}")}


def measure(server: Server, hook_path: str, externals: list[str], subscribe: list[str], rate: int, seconds: float) -> dict[str, Any]:
    """The steady load on ``server``: ``subscribe[i]`` is watcher i's subscribe message; webhook
    k goes to job ``externals[k % len(externals)]`` with progress k + 1."""
    warm = Http(server.port)
    for ext in externals:  # every job processing before the clock starts: no queue moves under load
        body, headers = webhook(ext, 0, time.time() - 60)
        assert warm.request("POST", hook_path, body, headers)[0] == 200
    load = [round(x, 2) for x in os.getloadavg()]  # other work on the same cores skews the figures
    pids = server.worker_pids()
    fds_before = fds(pids)
    ready, stop = mp.Event(), mp.Event()
    parent, child = mp.Pipe()
    proc = mp.Process(target=_watchers, args=(server.port, subscribe, ready, stop, child), daemon=True)
    proc.start()
    assert ready.wait(120), "watchers did not start"
    per_worker = sorted(fds(pids)[pid] - fds_before[pid] for pid in fds_before if os.path.exists(f"/proc/{pid}"))
    total = int(rate * seconds)
    base = time.time()
    prepared = [webhook(externals[k % len(externals)], k + 1, base + k / rate / 10) for k in range(total)]
    paced = paced_posts(server.port, hook_path, prepared, rate, seconds)
    sent, acked, acks, elapsed = paced.sent, paced.acked, paced.acks, paced.elapsed
    stop.set()
    report = parent.recv()
    proc.join(10)
    got = report.pop("arrivals")
    lat = [at - sent[k] for k in sent for at in got.get(k, ())]
    after_ack = [at - acked[k] for k in sent for at in got.get(k, ())]
    per_job = len(subscribe) // len(externals)
    return {
        "load_average_at_start": load,
        "workers": len(pids),
        "watchers": len(subscribe),
        "watchers_subscribed": report.get("greeted"),
        "watchers_alive_at_end": report.get("alive"),
        "watcher_error": report.get("error"),
        "connections_per_worker": per_worker,
        "target_rate_per_s": rate,
        "achieved_rate_per_s": round(len(sent) / elapsed, 1),
        "webhooks_scheduled": total,
        "webhooks_acknowledged": len(sent),
        "webhook_errors": paced.errors,
        "webhook_ack_ms": {"p50": ms(percentile(acks, 50)), "p99": ms(percentile(acks, 99))} if acks else None,
        "frames_expected": len(sent) * per_job,
        "frames_matched": len(lat),
        "webhooks_with_no_frame": sum(1 for k in sent if k not in got),
        "webhook_to_frame_ms": {
            "p50": ms(percentile(lat, 50)), "p90": ms(percentile(lat, 90)), "p99": ms(percentile(lat, 99)), "max": ms(max(lat))
        } if lat else None,
        # < 0: the frame came before the sender had the 200; the ack's share of the latency is ingest
        "frame_minus_ack_ms": {"p50": ms(percentile(after_ack, 50)), "p99": ms(percentile(after_ack, 99))} if after_ack else None,
    }


def run(workdir: Path, rate: int = 200, seconds: float = 8, watchers: int = 1000, jobs: int = 50) -> dict[str, Any]:
    """Both sides, one after the other, on one PostgreSQL database (one server up at a time)."""
    url, drop = make_database("postgres", workdir)
    out: dict[str, Any] = {
        "setup": f"{rate} webhooks/s for {seconds} s per side, {watchers} WebSocket watchers over {jobs} jobs "
                 f"({watchers // jobs} per job), webhooks and watchers on the same instance; loopback, PostgreSQL",
        "rate_per_s": rate, "seconds": seconds, "watchers": watchers, "jobs": jobs,
        "note": "the gateway coalesces a job's progress (progress_interval_ms) and frames for versions superseded before "
                "the read: under overload some webhooks have no frame of their own (webhooks_with_no_frame); the naive "
                "pipeline sends every one. frame latency is counted per frame, over every watcher",
    }
    try:
        gw = gateway_server(url, workdir, "pipeline-gateway", connections=watchers + 1000, workers=2)
        try:
            regs = [register(gw.port) for _ in range(jobs)]
            subscribe = [subscribe_msg(regs[i % jobs]) for i in range(watchers)]
            out["gateway"] = measure(gw, "/webhooks/worker", [r["job"]["external_id"] for r in regs], subscribe, rate, seconds)
        finally:
            gw.stop()
        create_naive_table(url)
        naive = Server({"WORKER_SECRETS": STANDARD_SECRET, "BENCH_NAIVE_DATABASE_URL": url, "NAIVE_PING_INTERVAL": "25"}, workers=1,
                       app="bench.baselines:naive_pipeline_app", extra_args=("--worker-connections", str(watchers + 1000)),
                       log_path=workdir / "pipeline-naive.log").start()
        try:
            externals = ["naive-" + uuid.uuid4().hex[:12] for _ in range(jobs)]
            subscribe = [json.dumps({"type": "subscribe", "job": externals[i % jobs]}) for i in range(watchers)]
            out["naive_pipeline"] = measure(naive, "/hook", externals, subscribe, rate, seconds)
        finally:
            naive.stop()
    finally:
        drop()
    g, n = (out[k]["webhook_to_frame_ms"] for k in ("gateway", "naive_pipeline"))
    if g and n:
        out["ratio_gateway_to_naive_p50"] = round(g["p50"] / n["p50"], 3)
        out["ratio_gateway_to_naive_p99"] = round(g["p99"] / n["p99"], 3)
    return out


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gunicorn workers inherit it
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    started = time.monotonic()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "nofile": hard, "python": sys.version.split()[0]}}
    results.update(run(workdir, rate=int(os.environ.get("BENCH_PIPELINE_RATE", "200")),
                       seconds=float(os.environ.get("BENCH_PIPELINE_SECONDS", "8")),
                       watchers=int(os.environ.get("BENCH_PIPELINE_WATCHERS", "1000")),
                       jobs=int(os.environ.get("BENCH_PIPELINE_JOBS", "50"))))
    results["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
