"""Retry → signed callback latency: the enqueuing process wakes its dispatcher at once, versus the
baseline in the same run, a retry committed by another process (found on the interval sweep).

    .venv/bin/python -m bench.callback_latency [--db postgres] [--n 30] [--interval 1]

Prints JSON: milliseconds from the retry's commit (its 202) to the receiver's request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.conftest import API_KEY, TEST_ENV, create_pg_database, drop_pg_database, register, server_env, write_config
from tests.receiver import Receiver
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_body, standard_headers

SECRET = "whsec_Y2FsbGJhY2stc2VjcmV0LWZvci10aGUtdGVzdHMtMDE="
API = {"Authorization": f"Bearer {API_KEY}"}


def fail(base: str) -> dict:
    reg = register(base, "cb")
    body = standard_body(reg["job"]["external_id"], "failed")
    requests.post(f"{base}/webhooks/cb", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10).raise_for_status()
    return reg


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1), "max_ms": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--interval", type=int, default=1)
    args = ap.parse_args()

    arrived: dict[str, float] = {}
    cond = threading.Condition()

    def respond(n: int, req) -> tuple:
        with cond:
            arrived[req.headers["webhook-id"]] = time.perf_counter()
            cond.notify_all()
        return (200, "ok")

    receiver = Receiver(respond=respond).start()
    tmp = Path(tempfile.mkdtemp())
    if args.db == "postgres":
        url = create_pg_database()
    else:
        from gateway.migrate import upgrade

        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
    extra = f'[sources.cb]\nadapter = "standard"\nsecrets_env = "WORKER_SECRETS"\ncallback_url = "{receiver.url}/hook"\ncallback_secret_env = "CB_SECRET"\n'
    cfg = write_config(tmp / "gateway.toml", f"outbox_interval = {args.interval}", extra)
    srv = Server(server_env(url, cfg, CB_SECRET=SECRET)).start()

    from gateway.app import create_app
    from gateway.config import load_config

    other = create_app(load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url, "CB_SECRET": SECRET}), background=False).test_client()

    def wait(key: str) -> float:
        with cond:
            while key not in arrived:
                cond.wait(30)
            return arrived[key]

    results: dict[str, list[float]] = {"woken_same_process": [], "baseline_other_process_sweep": []}
    try:
        for i in range(args.n):
            for mode in results:
                job_id = fail(srv.url)["job"]["id"]
                if mode == "woken_same_process":
                    r = requests.post(f"{srv.url}/api/jobs/{job_id}/retry", headers=API, timeout=10)
                    t0 = time.perf_counter()  # the 202 left after the commit
                    assert r.status_code == 202
                else:
                    r = other.post(f"/api/jobs/{job_id}/retry", headers=API)  # committed here, this process sends nothing
                    t0 = time.perf_counter()
                    assert r.status_code == 202
                results[mode].append((wait(f"msg_retry_{job_id}_2") - t0) * 1000)
    finally:
        srv.stop()
        receiver.stop()
        if args.db == "postgres":
            drop_pg_database(url)
    print(json.dumps({"bench": "callback_latency", "db": args.db, "outbox_interval_s": args.interval, "workers": 2,
                      **{k: summary(v) for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
