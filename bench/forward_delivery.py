"""What ``delivery.<source>`` forwarding (CONTRACT §9) costs ingest: ``python -m bench.forward_delivery``.

Two gateways on their own PostgreSQL databases under the same gunicorn settings (``-k gevent``,
2 workers) and the same ``wrk`` load as bench/ingest.py (distinct signed Standard Webhooks
events, pre-made): the baseline has no endpoint; the other forwards every delivery of the
source (``events = ["delivery.worker"]``) to a local receiver, so each request also inserts its
delivery with its id answered, owes an outbox row, and the sender posts the body. A third
forwards to a port that refuses connections: every message is still claimed, tried once
(refused at once) and recorded, so it separates the HTTP exchange from the rest. Rounds are interleaved and
medians reported. Options as bench/ingest.py (BENCH_INGEST_SECONDS,
BENCH_ROUNDS_HTTP, BENCH_CONNECTIONS, BENCH_JOBS, BENCH_POOL).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ingest import WORKERS, measured, median_of, signed_pool
from bench.relay import CONFIG, ENV, Http, iso_at, make_database, register
from tests.receiver import Receiver
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_headers

ENDPOINT_SECRET = "whsec_" + "YmVuY2gtZm9yd2FyZC1kZWxpdmVyeS1zZWNyZXQtMDAx"


def gateway(url: str, workdir: Path, name: str, endpoint_url: str | None) -> Server:
    cfg = workdir / f"{name}.toml"
    endpoint = f'[endpoints.backend]\nurl = "{endpoint_url}"\nsecret_env = "BACKEND_SECRET"\nevents = ["delivery.worker"]\n' if endpoint_url else ""
    cfg.write_text(CONFIG + "\n" + endpoint)
    env = {**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url, "BACKEND_SECRET": ENDPOINT_SECRET}
    return Server(env, workers=WORKERS, log_path=workdir / f"{name}.log").start()


def run(workdir: Path, seconds: float, rounds: int, connections: int, n_jobs: int) -> dict[str, Any]:
    receiver = Receiver(respond=lambda n, req: (204, b"")).start()
    dbs = {name: make_database("postgres", workdir) for name in ("off", "on", "owed")}
    servers = {"forwarding_off": gateway(dbs["off"][0], workdir, "fwd-off", None),
               "forwarding_on": gateway(dbs["on"][0], workdir, "fwd-on", receiver.url + "/hooks"),
               "refusing_endpoint": gateway(dbs["owed"][0], workdir, "fwd-owed", "http://127.0.0.1:9/refused")}
    try:
        jobs = {name: [register(srv.port) for _ in range(n_jobs)] for name, srv in servers.items()}
        for name, srv in servers.items():
            warm = Http(srv.port)
            for reg in jobs[name]:
                body = json.dumps({"external_id": reg["job"]["external_id"], "state": "processing", "occurred_at": iso_at(time.time() - 3600)}).encode()
                assert warm.request("POST", "/webhooks/worker", body, standard_headers(STANDARD_SECRET, body))[0] == 200
        size = int(os.environ.get("BENCH_POOL", "20000"))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
        clock = time.time() - 1800
        for _ in range(rounds):
            for name, srv in servers.items():
                pool = signed_pool("/webhooks/worker", jobs[name], size, clock)
                runs[name].append(measured(srv, seconds=seconds, connections=connections, pool=pool, workdir=workdir))
            clock += size / 1000 + 1
        out: dict[str, Any] = {name: median_of(rs) for name, rs in runs.items()}
        on, off, owed = out["forwarding_on"], out["forwarding_off"], out["refusing_endpoint"]
        out["ingest_cost_of_forwarding"] = round(1 - on["requests_per_s"] / off["requests_per_s"], 3)
        out["cpu_cost_of_forwarding"] = round(on["worker_cpu_ms_per_request"] / off["worker_cpu_ms_per_request"] - 1, 3)
        out["ingest_cost_refusing_endpoint"] = round(1 - owed["requests_per_s"] / off["requests_per_s"], 3)
        out["cpu_cost_refusing_endpoint"] = round(owed["worker_cpu_ms_per_request"] / off["worker_cpu_ms_per_request"] - 1, 3)
        out["messages_received"] = len(receiver.requests)
        out["setup"] = (f"gunicorn -k gevent -w {WORKERS}; wrk -t2 -c{connections} -d{seconds}s, {rounds} interleaved rounds, medians; "
                        f"PostgreSQL; {n_jobs} jobs in processing; on: every delivery forwarded to a local receiver")
        return out
    finally:
        for srv in servers.values():
            srv.stop()
        for _, drop in dbs.values():
            drop()
        receiver.stop()


def main() -> None:
    seconds = float(os.environ.get("BENCH_INGEST_SECONDS", "6"))
    rounds = int(os.environ.get("BENCH_ROUNDS_HTTP", "3"))
    connections = int(os.environ.get("BENCH_CONNECTIONS", "16"))
    n_jobs = int(os.environ.get("BENCH_JOBS", "400"))
    print(json.dumps(run(Path(tempfile.mkdtemp(prefix="bench-fwd-delivery-")), seconds, rounds, connections, n_jobs), indent=2))


if __name__ == "__main__":
    main()
