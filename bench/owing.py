"""What owing a forwarded message costs the webhook's own transaction: ``python -m bench.owing``.

The ingest path alone, in one process through Flask's test client on one fresh PostgreSQL
database (no HTTP server, and no sender running: the apps are built without background work),
so only what the webhook's transaction pays is measured: CPU time per verified webhook (a
progress report for a processing job) with no endpoint, with an endpoint wanting
``delivery.worker`` (the delivery inserted with its id answered, one outbox row) and with one
wanting ``job.*`` (one outbox row per new version). Interleaved rounds, medians.
Options: BENCH_OWING_ROUNDS (5), BENCH_OWING_REQUESTS (300).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import create_pg_database, drop_pg_database, register
from tests.gwapp import make_app
from tests.signing import STANDARD_SECRET, iso_now, standard_headers

SECRET = "whsec_" + "YmVuY2gtZm9yd2FyZC1kZWxpdmVyeS1zZWNyZXQtMDAx"


def endpoint(events: str) -> str:
    return f'[endpoints.backend]\nurl = "http://127.0.0.1:9/x"\nsecret_env = "BENCH_ENDPOINT_SECRET"\nevents = {events}\n'


def cpu_ms_per_webhook(app: Any, n: int) -> float:
    client = app.test_client()
    exts = []
    for _ in range(20):  # jobs in processing before the clock starts
        ext = "own-" + uuid.uuid4().hex[:10]
        register(client, "worker", ext)
        body = json.dumps({"external_id": ext, "state": "processing", "occurred_at": iso_now(-60_000)})
        assert client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body)).status_code == 200
        exts.append(ext)
    requests = []
    for k in range(n):
        body = json.dumps({"external_id": exts[k % len(exts)], "state": "processing", "occurred_at": iso_now(k), "progress": {"current": k, "total": n}})
        requests.append((body, standard_headers(STANDARD_SECRET, body)))
    started = time.process_time()
    for body, headers in requests:
        assert client.post("/webhooks/worker", data=body, headers=headers).status_code == 200
    return (time.process_time() - started) * 1000 / n


def main() -> None:
    rounds = int(os.environ.get("BENCH_OWING_ROUNDS", "5"))
    n = int(os.environ.get("BENCH_OWING_REQUESTS", "300"))
    url = create_pg_database()
    try:
        workdir = Path(tempfile.mkdtemp(prefix="bench-owing-"))
        apps = {"no_endpoint": make_app(url, workdir),
                "delivery_messages": make_app(url, workdir, endpoint('["delivery.worker"]'), BENCH_ENDPOINT_SECRET=SECRET),
                "job_messages": make_app(url, workdir, endpoint('["job.*"]'), BENCH_ENDPOINT_SECRET=SECRET)}
        runs: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(rounds):
            for name, app in apps.items():
                runs[name].append(cpu_ms_per_webhook(app, n))
        out: dict[str, Any] = {name: round(statistics.median(v), 3) for name, v in runs.items()}
        base = out["no_endpoint"]
        out["cost_delivery_messages"] = round(out["delivery_messages"] / base - 1, 3)
        out["cost_job_messages"] = round(out["job_messages"] / base - 1, 3)
        out["setup"] = f"CPU ms per webhook, Flask test client, PostgreSQL, {rounds} interleaved rounds of {n}, medians; no sender running"
        print(json.dumps(out, indent=2))
    finally:
        drop_pg_database(url)


if __name__ == "__main__":
    main()
