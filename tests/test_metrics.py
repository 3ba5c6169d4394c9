"""Prometheus metrics under `gateway serve` with two gunicorn workers: every worker's counts merged."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY, ARTIFACTS, create_pg_database, drop_pg_database, server_env, write_config
from tests.servers import Server, free_port
from tests.signing import STANDARD_SECRET, standard_body, standard_headers

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of /metrics as {(sample name, sorted labels): value}."""
    r = requests.get(base + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[Server, Path]]:
    """`gateway serve --workers 2` on its own fresh PostgreSQL database and metrics directory."""
    url = create_pg_database()
    d = tmp_path_factory.mktemp("metrics")
    metrics_dir = d / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's leftovers: wiped at start
    port = free_port()
    env = server_env(url, write_config(d / "gateway.toml"), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    exe = str(Path(sys.executable).with_name("gateway"))
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(env, port=port, log_path=ARTIFACTS / f"metrics-{os.getpid()}.log",
                 argv=(exe, "serve", "--port", str(port), "--workers", "2", "--worker-connections", "500")).start()
    try:
        yield srv, metrics_dir
    finally:
        srv.stop()
        drop_pg_database(url)


def webhook(base: str, external_id: str, state: str, msg_id: str | None = None, secret: str = STANDARD_SECRET, **fields: Any) -> requests.Response:
    body = standard_body(external_id, state, **fields)
    return requests.post(base + "/webhooks/worker", data=body, headers=standard_headers(secret, body, msg_id), timeout=10)


def test_metrics_merge_both_workers(served: tuple[Server, Path]) -> None:
    srv, metrics_dir = served
    base = srv.url
    assert not (metrics_dir / "counter_999999.db").exists()
    pids = srv.worker_pids()
    assert len(pids) == 2

    def job(i: int) -> tuple[str, str, str]:
        ext = f"m-{i}-{uuid.uuid4().hex[:6]}"
        r = requests.post(base + "/api/jobs", json={"source": "worker", "external_id": ext}, headers=AUTH, timeout=10)
        assert r.status_code == 201
        return ext, r.json()["job"]["id"], r.json()["token"]

    accepted = duplicates = rejected = polls_200 = polls_304 = 0
    jobs: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 60
    # concurrent fresh connections until both workers have served webhooks (their counter files exist)
    # (at least one batch: a worker may have written its counter file before any webhook)
    while not jobs or not all((metrics_dir / f"counter_{pid}.db").exists() for pid in pids):
        assert time.monotonic() < deadline, f"traffic never reached both workers {pids}: {os.listdir(metrics_dir)}"
        with ThreadPoolExecutor(8) as pool:
            batch = list(pool.map(job, range(len(jobs), len(jobs) + 8)))
            results = list(pool.map(lambda j: webhook(base, j[0], "processing", progress={"current": 1, "total": 2}), batch))
        assert all(r.status_code == 200 and r.json()["status"] == "accepted" for r in results)
        jobs += batch
        accepted += len(batch)
    ext, job_id, token = jobs[0]
    msg = "msg_dup_" + uuid.uuid4().hex
    assert webhook(base, ext, "complete", msg).json()["status"] == "accepted"
    assert webhook(base, ext, "complete", msg).json()["status"] == "duplicate"
    accepted, duplicates = accepted + 1, duplicates + 1
    for _ in range(3):
        assert webhook(base, ext, "failed", secret="whsec_" + "A" * 32).status_code == 401
        rejected += 1
    assert requests.post(base + "/webhooks/nosuchsource", data=b"{}", timeout=10).status_code == 404
    for _ in range(5):
        r = requests.get(f"{base}/api/jobs/{job_id}", params={"token": token}, timeout=10)
        assert r.status_code == 200
        polls_200 += 1
        r = requests.get(f"{base}/api/jobs/{job_id}", params={"token": token}, headers={"If-None-Match": r.headers["ETag"]}, timeout=10)
        assert r.status_code == 304
        polls_304 += 1

    for _ in range(6):  # whichever worker answers the scrape, it reports everyone's counts
        s = samples(base)
        assert value(s, "gateway_webhooks_total", source="worker", outcome="accepted") == accepted
        assert value(s, "gateway_webhooks_total", source="worker", outcome="duplicate") == duplicates
        assert value(s, "gateway_webhooks_total", source="worker", outcome="rejected") == rejected
        assert value(s, "gateway_webhooks_total", source="_unknown", outcome="rejected") == 1
        assert value(s, "gateway_ingest_seconds_count", source="worker") == accepted + duplicates
        assert value(s, "gateway_polls_total", kind="poll", status="200") == polls_200
        assert value(s, "gateway_polls_total", kind="poll", status="304") == polls_304
        assert value(s, "gateway_jobs", state="processing") == len(jobs) - 1
        assert value(s, "gateway_jobs", state="complete") == 1
        assert ("gateway_ws_connections", ()) in s and ("gateway_fanout_lag_seconds_count", ()) in s

    # a worker that dies and is replaced does not take its counts with it
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(set(srv.worker_pids()) - {pids[0]}) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)
    s = samples(base)
    assert value(s, "gateway_webhooks_total", source="worker", outcome="accepted") == accepted
