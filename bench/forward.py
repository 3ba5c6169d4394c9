"""Forwarding (CONTRACT §9), each figure beside its baseline in the same run: ``python -m bench.forward``.

All on PostgreSQL, the gateway under gunicorn (gevent, 2 workers), one endpoint at a local
receiver (a threaded HTTP server in this process, the same one for every case).

* delivery: a backlog of owed messages (progress not coalesced, ``progress_interval_ms = 0``)
  built while the endpoint is disabled, then enabled: messages/s until the receiver holds them
  all; baseline: the naive loop, one ``requests.post`` per change (each message signed with the
  ``standardwebhooks`` library), of the same messages to the same receiver.
* ingest: distinct signed webhooks under ``wrk`` through the full path, forwarding on (every
  change owes the endpoint a message) against off, interleaved rounds, medians (bench.ingest).
* latency: state changes at a steady 100 per second; milliseconds from the commit (the 200
  the webhook got back, which follows it) to the receiver's request, p50 / p99.

Options (environment): BENCH_FORWARD_BACKLOG_JOBS (300; 5 messages each), BENCH_INGEST_SECONDS
(5), BENCH_ROUNDS_HTTP (3), BENCH_CONNECTIONS (16), BENCH_JOBS (400), BENCH_LATENCY_SECONDS (10).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

from bench.ingest import cpu_seconds, measured, median_of, signed_pool
from bench.relay import API_KEY, CONFIG, ENV, Http, iso_at, make_database, register
from tests.receiver import Received, Receiver
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_headers

WORKERS = 2
SECRET = "whsec_" + "YmVuY2gtZm9yd2FyZC1zZWNyZXQtMDEyMzQ1Njc4OQ=="
ENDPOINT = "backend"


def server(url: str, workdir: Path, name: str, receiver: Receiver | None, gateway_extra: str = "") -> Server:
    """The gateway, with one endpoint at ``receiver`` (forwarding on) or none (off)."""
    text = CONFIG.replace("[gateway]\n", "[gateway]\n" + gateway_extra + "\n")
    if receiver is not None:
        text += f'\n[endpoints.{ENDPOINT}]\nurl = "{receiver.url}/hooks"\nsecret_env = "EP_SECRET"\n'
    cfg = workdir / f"{name}.toml"
    cfg.write_text(text)
    env = {**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url, "EP_SECRET": SECRET}
    return Server(env, workers=WORKERS, log_path=workdir / f"{name}.log").start()


def post(http: Http, ext: str, state: str, at: float, current: int | None = None) -> None:
    fields: dict[str, Any] = {"external_id": ext, "state": state, "occurred_at": iso_at(at)}
    if current is not None:
        fields["progress"] = {"current": current, "total": 10**6}
    body = json.dumps(fields).encode()
    status, data = http.request("POST", "/webhooks/worker", body, standard_headers(STANDARD_SECRET, body))
    assert status == 200, data


def wait_count(receiver: Receiver, n: int, timeout: float = 300) -> list[Received]:
    return receiver.wait_until(lambda got: sum(1 for r in got if r.status == 200) >= n, timeout)


def delivery(workdir: Path, jobs: int) -> dict[str, Any]:
    """Messages/s from a backlog: the gateway's senders against the naive requests.post loop."""
    receiver = Receiver().start()
    url, drop = make_database("postgres", workdir)
    from gateway.db import make_engine
    from gateway.messages import disable_endpoint
    from gateway.store import Store

    store = Store(make_engine(url))
    with store.transaction() as w:  # the backlog builds while the endpoint is disabled
        disable_endpoint(w, ENDPOINT, "bench: building a backlog")
    srv = server(url, workdir, "delivery", receiver, "progress_interval_ms = 0")
    try:
        http = Http(srv.port)
        start = time.time() - 600
        for j in range(jobs):
            ext = register(srv.port)["job"]["external_id"]
            for k in range(1, 5):
                post(http, ext, "processing", start + j + k / 10, current=k)
        owed = jobs * 5
        cpu0 = cpu_seconds(srv)
        t0 = time.perf_counter()
        r = requests.post(f"{srv.url}/api/endpoints/{ENDPOINT}/enable", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        got = wait_count(receiver, owed)
        gateway_s = time.perf_counter() - t0
        gateway_cpu = cpu_seconds(srv) - cpu0
        bodies = [(q.headers["webhook-id"], q.body) for q in got if q.status == 200][:owed]
    finally:
        srv.stop()
        store.engine.dispose()
        drop()
    naive = Receiver().start()
    try:
        wh = Webhook(SECRET)
        cpu0 = time.thread_time()  # this loop's own CPU (the receiver runs in other threads)
        t0 = time.perf_counter()
        for msg_id, body in bodies:  # the naive forwarder: sign, then one requests.post per change
            now = datetime.now(UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": wh.sign(msg_id, now, body.decode()), "content-type": "application/json"}
            assert requests.post(naive.url + "/hooks", data=body, headers=headers, timeout=10).status_code == 200
        naive_s = time.perf_counter() - t0
        naive_cpu = time.thread_time() - cpu0
    finally:
        naive.stop()
        receiver.stop()
    out = {"messages": owed, "gateway_messages_per_s": round(owed / gateway_s, 1),
           "naive_requests_post_loop_messages_per_s": round(owed / naive_s, 1)}
    out["ratio_gateway_to_naive"] = round(out["gateway_messages_per_s"] / out["naive_requests_post_loop_messages_per_s"], 3)
    # the rate drifts with what else the (shared) machine does; CPU per message does not
    out["gateway_worker_cpu_ms_per_message"] = round(gateway_cpu * 1000 / owed, 3)
    out["naive_loop_cpu_ms_per_message"] = round(naive_cpu * 1000 / owed, 3)
    out["setup"] = (f"gunicorn -k gevent -w {WORKERS}; PostgreSQL; {jobs} jobs x 5 messages owed while the endpoint was disabled, "
                    "then enabled (the other worker joins at its outbox interval); the gateway keeps per-job order, "
                    "records each try and traces it; the naive loop does neither")
    return out


def ingest(workdir: Path, seconds: float, rounds: int, connections: int, n_jobs: int) -> dict[str, Any]:
    """Webhooks/s with forwarding on (one endpoint) against off, interleaved rounds."""
    receiver = Receiver().start()
    dbs = {name: make_database("postgres", workdir) for name in ("forwarding_on", "forwarding_off")}
    servers = {name: server(url, workdir, f"ingest-{name}", receiver if name == "forwarding_on" else None)
               for name, (url, _) in dbs.items()}
    try:
        jobs = {name: [register(srv.port) for _ in range(n_jobs)] for name, srv in servers.items()}
        for name, srv in servers.items():
            http = Http(srv.port)
            for reg in jobs[name]:
                post(http, reg["job"]["external_id"], "processing", time.time() - 3600)
        size = int(os.environ.get("BENCH_POOL", "20000"))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
        clock = time.time() - 1800
        for _ in range(rounds):
            pools = {name: signed_pool("/webhooks/worker", jobs[name], size, clock) for name in servers}
            clock += size / 1000 + 1
            for name, srv in servers.items():
                runs[name].append(measured(srv, seconds=seconds, connections=connections, pool=pools[name], workdir=workdir))
        out: dict[str, Any] = {name: median_of(rs) for name, rs in runs.items()}
        on, off = out["forwarding_on"]["requests_per_s"], out["forwarding_off"]["requests_per_s"]
        out["cost_of_forwarding_pct"] = round(100 * (1 - on / off), 1)
        cpu_on, cpu_off = out["forwarding_on"]["worker_cpu_ms_per_request"], out["forwarding_off"]["worker_cpu_ms_per_request"]
        out["cpu_cost_of_forwarding_pct"] = round(100 * (cpu_on / cpu_off - 1), 1)
        out["messages_received_during_ingest"] = sum(1 for r in receiver.requests if r.status == 200)
        out["distinct_webhook_ids_received"] = len({r.headers["webhook-id"] for r in receiver.requests if r.status == 200})
        out["setup"] = (f"gunicorn -k gevent -w {WORKERS}; wrk -t2 -c{connections} -d{seconds}s, {rounds} interleaved rounds, "
                        f"medians; PostgreSQL; {n_jobs} jobs in processing, one distinct progress event per request")
        return out
    finally:
        for srv in servers.values():
            srv.stop()
        for _, drop in dbs.values():
            drop()
        receiver.stop()


def latency(workdir: Path, rate: int, seconds: float) -> dict[str, Any]:
    """Commit → receiver milliseconds at a steady ``rate`` of state changes per second."""
    arrived: dict[tuple[str, str], float] = {}  # (job id, message type) → when the receiver had it
    cond = threading.Condition()

    def respond(n: int, req: Received) -> tuple[int, bytes]:
        at = time.perf_counter()
        message = json.loads(req.body)
        with cond:
            arrived.setdefault((message["data"]["id"], message["type"]), at)
            cond.notify_all()
        return 200, b""

    receiver = Receiver(respond=respond).start()
    url, drop = make_database("postgres", workdir)
    srv = server(url, workdir, "latency", receiver)
    try:
        n = int(rate * seconds)
        regs: list[dict[str, Any]] = []
        # each job in a queue of its own: leaving it moves no other job (in one shared queue of n
        # jobs every change would also rewrite the position of every job still waiting, each a
        # job.progress message: a figure for deep queues, not for forwarding's latency)
        registering = [threading.Thread(target=lambda t=t: regs.extend(register(srv.port, queue=f"bench-{t}-{k}") for k in range(n // 4)))
                       for t in range(4)]
        for t in registering:
            t.start()
        for t in registering:
            t.join()
        http = Http(srv.port)
        committed: dict[tuple[str, str], float] = {}
        t_start = time.perf_counter()
        for i, reg in enumerate(regs):
            due = t_start + i / rate
            if (pause := due - time.perf_counter()) > 0:
                time.sleep(pause)  # the load's pace, not a synchronisation
            post(http, reg["job"]["external_id"], "processing", time.time())
            committed[(reg["job"]["id"], "job.processing")] = time.perf_counter()  # the 200 follows the commit
        deadline = time.monotonic() + 60
        with cond:
            while not all(k in arrived for k in committed) and time.monotonic() < deadline:
                cond.wait(1)
        ms = sorted((arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived)
    finally:
        srv.stop()
        drop()
        receiver.stop()
    return {"rate_per_s": rate, "changes": len(committed), "arrived": len(ms),
            "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 1), "max_ms": round(ms[-1], 1),
            "setup": f"gunicorn -k gevent -w {WORKERS}; PostgreSQL; one job.processing message per change, {rate}/s for {seconds}s"}


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    which = os.environ.get("BENCH_SUITES", "delivery,ingest,latency").split(",")
    out: dict[str, Any] = {"bench": "forward"}
    suites = {
        "delivery": lambda: delivery(workdir, int(os.environ.get("BENCH_FORWARD_BACKLOG_JOBS", "300"))),
        "ingest": lambda: ingest(workdir, float(os.environ.get("BENCH_INGEST_SECONDS", "5")), int(os.environ.get("BENCH_ROUNDS_HTTP", "3")),
                                 int(os.environ.get("BENCH_CONNECTIONS", "16")), int(os.environ.get("BENCH_JOBS", "400"))),
        "latency": lambda: latency(workdir, 100, float(os.environ.get("BENCH_LATENCY_SECONDS", "10"))),
    }
    for name in which:
        out[name] = suites[name]()
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)  # each figure as soon as it is measured
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
