"""Operator-path figures, each against a baseline measured in the same run; prints JSON.

    .venv/bin/python -m bench.ops

* probes: /readyz (database + migration check) against /healthz (nothing), and /metrics,
  sequential requests on one keep-alive connection to a real 2-worker gunicorn;
* trace: `gateway trace <job>` wall time for a job with a long history, against
  `gateway --help` (interpreter and CLI start-up alone), and ``build_trace`` in-process
  against reading the job row.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import API_KEY, TEST_ENV, server_env, write_config  # noqa: E402
from tests.servers import Server  # noqa: E402
from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers  # noqa: E402


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"n": len(samples), "p50_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3), "max_ms": round(samples[-1] * 1000, 3)}


def _timed_get(session: requests.Session, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = session.get(url, timeout=10)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out


def _timed_cmd(argv: list[str], env: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        out.append(time.perf_counter() - t)
        assert done.returncode == 0, done.stderr
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    db_url = f"sqlite:///{tmp / 'gateway.db'}"
    from gateway.migrate import upgrade

    upgrade(db_url)
    cfg = write_config(tmp / "gateway.toml")
    srv = Server(server_env(db_url, cfg)).start()
    results: dict[str, Any] = {"bench": "ops", "database": "sqlite", "workers": srv.workers}
    try:
        s = requests.Session()
        _timed_get(s, srv.url + "/healthz", 50)  # warm both workers' connections
        results["healthz_baseline"] = _stats(_timed_get(s, srv.url + "/healthz", 500))
        results["readyz"] = _stats(_timed_get(s, srv.url + "/readyz", 500))
        results["metrics"] = _stats(_timed_get(s, srv.url + "/metrics", 200))

        ext = "bench-" + uuid.uuid4().hex[:8]
        r = s.post(srv.url + "/api/jobs", json={"source": "worker", "external_id": ext}, headers={"Authorization": f"Bearer {API_KEY}"})
        job_id = r.json()["job"]["id"]
        deliveries = 300
        for i in range(deliveries):
            body = standard_body(ext, "processing", iso_now(i), progress={"current": i, "total": deliveries})
            s.post(srv.url + "/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
        body = standard_body(ext, "complete", iso_now(deliveries + 1))
        s.post(srv.url + "/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    finally:
        srv.stop()

    env = {**os.environ, **TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    gateway = str(Path(sys.executable).with_name("gateway"))
    results["cli_help_baseline"] = _stats(_timed_cmd([gateway, "--help"], env, 10))
    results["cli_trace"] = {**_stats(_timed_cmd([gateway, "trace", job_id], env, 10)), "deliveries": deliveries + 1}
    lines = subprocess.run([gateway, "trace", job_id], env=env, capture_output=True, text=True).stdout.count("\n") + 1
    results["cli_trace"]["lines"] = lines

    from gateway.db import make_engine
    from gateway.store import Store
    from gateway.trace import build_trace, render_trace

    store = Store(make_engine(db_url))
    get = []
    build = []
    for _ in range(30):
        t = time.perf_counter()
        store.get_job(job_id)
        get.append(time.perf_counter() - t)
        t = time.perf_counter()
        render_trace(build_trace(store, job_id) or {})
        build.append(time.perf_counter() - t)
    results["get_job_baseline"] = _stats(get)
    results["build_and_render_trace"] = _stats(build)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
