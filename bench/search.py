"""Console search at scale (issue 16) on PostgreSQL; prints JSON.

    .venv/bin/python -m bench.search [--jobs 200000] [--deliveries 1000000] [--n 40]

Seeds a scratch database (dropped at the end) with ``--jobs`` jobs, a registration key each,
two provider events each and ``--deliveries`` deliveries, all by ``INSERT … SELECT`` over
``generate_series``. Then runs the console's search (``gateway.support.find_jobs``, what
``/console/?q=`` calls) ``--n`` times per kind of query, each time for a different target:

* job_id, external_id, event_id, request_id: a whole id pasted from a ticket;
* label_substring: a customer id inside labels (10 jobs carry it);
* label_broad: words a quarter of all labels contain (newest 20 shown);
* miss: text nothing contains (every lookup runs, none finds anything).

Baseline, in the same run on the same rows: the schema before migration 0007_search (no
equality indexes on those ids, no pg_trgm: every lookup a sequential scan). Then the migration
runs (its wall time reported) and the same queries run again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import PG_ADMIN_URL  # noqa: E402

AREAS = ("render invoice", "resize images", "export report", "send digest")
CUSTOMERS = 20_000


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# the same formulas as the SQL below, so targets can be picked without asking the database
def job_id(i: int) -> str:
    return "job_" + _md5(f"j{i}")[:26].upper()


def external_id(i: int) -> str:
    return "ext-" + _md5(f"e{i}")[:16]


def event_id(n: int) -> str:
    return "msg_" + _md5(f"v{n}")[:24]


def request_id(n: int) -> str:
    return _md5(f"r{n}")[:32]


def customer(k: int) -> str:
    return "cus_" + _md5(f"c{k}")[:10]


SEED = """
INSERT INTO jobs (id, source, external_id, label, queue_name, registered_queue, registered_label, state, version, attempt,
                  created_at, updated_at, state_changed_at, queued_since, fold)
SELECT 'job_' || upper(substr(md5('j' || i), 1, 26)), 'worker', 'ext-' || substr(md5('e' || i), 1, 16),
       (ARRAY['render invoice', 'resize images', 'export report', 'send digest'])[1 + i % 4]
         || ' for cus_' || substr(md5('c' || (i % :customers)), 1, 10) || ' batch ' || i,
       'default', 'default', NULL, (ARRAY['queued', 'processing', 'complete', 'failed'])[1 + i % 4], 3, 1,
       t, t + interval '1 minute', t + interval '1 minute', t, '{}'::json
FROM (SELECT i, timestamp '2026-11-01' + i * interval '10 seconds' AS t FROM generate_series(1, :jobs) i) s;

INSERT INTO job_keys (source, external_id, job_id, linked_at)
SELECT 'worker', 'ext-' || substr(md5('e' || i), 1, 16), 'job_' || upper(substr(md5('j' || i), 1, 26)), NULL
FROM generate_series(1, :jobs) i;

INSERT INTO events (source, event_id, external_id, job_id, kind, type, state, occurred_at, received_at)
SELECT 'worker', 'msg_' || substr(md5('v' || n), 1, 24), 'ext-' || substr(md5('e' || i), 1, 16),
       'job_' || upper(substr(md5('j' || i), 1, 26)), 'provider', 'job.' || st, st, t, t
FROM (SELECT n, (n - 1) / 2 + 1 AS i, CASE WHEN n % 2 = 1 THEN 'processing' ELSE 'complete' END AS st,
             timestamp '2026-11-01' + n * interval '5 seconds' AS t
      FROM generate_series(1, 2 * :jobs) n) s;

INSERT INTO deliveries (received_at, source, status, outcome, reason, event_id, event_type, external_id, job_id, decision,
                        state_before, state_after, version, size, remote_addr, request_id)
SELECT timestamp '2026-11-01' + n * interval '2 seconds', 'worker',
       CASE WHEN n % 50 = 0 THEN 401 ELSE 200 END,
       CASE WHEN n % 50 = 0 THEN 'rejected' WHEN n % 7 = 0 THEN 'duplicate' ELSE 'accepted' END,
       CASE WHEN n % 50 = 0 THEN 'signature matches no active secret' END,
       'msg_' || substr(md5('d' || n), 1, 24), 'job.processing', 'ext-' || substr(md5('e' || i), 1, 16),
       'job_' || upper(substr(md5('j' || i), 1, 26)), 'applied', 'queued', 'processing', 2, 300, '127.0.0.1',
       substr(md5('r' || n), 1, 32)
FROM (SELECT n, (n - 1) % :jobs + 1 AS i FROM generate_series(1, :deliveries) n) s;
"""


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}


def _targets(jobs: int, deliveries: int, n: int) -> dict[str, list[str]]:
    rng = random.Random(16)
    return {
        "job_id": [job_id(rng.randint(1, jobs)) for _ in range(n)],
        "external_id": [external_id(rng.randint(1, jobs)) for _ in range(n)],
        "event_id": [event_id(rng.randint(1, 2 * jobs)) for _ in range(n)],
        "request_id": [request_id(rng.randint(1, deliveries)) for _ in range(n)],
        "label_substring": [customer(rng.randint(0, min(CUSTOMERS, jobs) - 1)) for _ in range(n)],
        "label_broad": ["export report"] * n,
        "miss": [f"zz-{rng.getrandbits(48):012x}" for _ in range(n)],
    }


def _run(search: Callable[[str], list[Any]], targets: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, texts in targets.items():
        search(texts[0])  # warm the plan and the pages
        samples, hits = [], []
        for text in texts:
            t = time.perf_counter()
            found = search(text)
            samples.append(time.perf_counter() - t)
            hits.append(len(found))
        out[kind] = {**_stats(samples), "hits_min": min(hits), "hits_max": max(hits)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--deliveries", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()

    import psycopg
    from sqlalchemy import text

    from alembic import command
    from gateway.db import make_engine
    from gateway.migrate import alembic_config
    from gateway.store import Store
    from gateway.support import find_jobs

    admin = PG_ADMIN_URL.replace("+psycopg", "")
    name = f"gw_bench_search_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    results: dict[str, Any] = {"bench": "search", "database": "postgresql", "rows": {}, "seconds": {}}
    try:
        command.upgrade(alembic_config(url), "0006_console")
        t = time.perf_counter()
        with engine.begin() as conn:
            for statement in filter(str.strip, SEED.split(";")):
                conn.execute(text(statement.replace(":customers", str(CUSTOMERS)).replace(":jobs", str(args.jobs))
                                  .replace(":deliveries", str(args.deliveries))))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            results["postgres"] = conn.scalar(text("SHOW server_version"))
            for table in ("jobs", "job_keys", "events", "deliveries"):
                results["rows"][table] = conn.scalar(text(f"SELECT count(*) FROM {table}"))
        results["seconds"]["seed"] = round(time.perf_counter() - t, 1)

        store = Store(engine)
        targets = _targets(args.jobs, args.deliveries, args.n)
        results["baseline_0006_sequential_scans"] = _run(lambda q: find_jobs(store, q), targets)

        t = time.perf_counter()
        command.upgrade(alembic_config(url), "0007_search")
        results["seconds"]["migrate_0007_search"] = round(time.perf_counter() - t, 1)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()  # new connections: no plan cached for the old schema
        results["gateway_0007_indexes"] = _run(lambda q: find_jobs(store, q), targets)
        results["p50_speedup"] = {kind: round(results["baseline_0006_sequential_scans"][kind]["p50_ms"] / max(v["p50_ms"], 0.01), 1)
                                  for kind, v in results["gateway_0007_indexes"].items()}
        results["gateway_p95_under_200ms"] = all(v["p95_ms"] < 200 for v in results["gateway_0007_indexes"].values())
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
