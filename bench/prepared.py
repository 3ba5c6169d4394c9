"""The write path's cost on one connection, statements prepared or sent as text: ``python -m bench.prepared``.

No HTTP and no gevent: one process writes N webhooks' events through ``Store.write`` (the fast
path: two scripts per webhook) on a pool of one connection, first with ``prepare_statements``
on, then off, then again in that order (the machine drifts), and the naive handler's
INSERT + COMMIT on a connection of its own as the baseline. For each: this process's CPU per
webhook and the PostgreSQL backend's (read from ``/proc`` by the backend's pid), wall time per
webhook. Options (environment): BENCH_PREPARED_N (3000).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from adapters.base import ProviderEvent
from bench.baselines import create_naive_table, naive_table
from bench.relay import make_database
from gateway.db import make_engine
from gateway.states import State
from gateway.store import Store


def backend_seconds(pid: int) -> float:
    """CPU (user + system) the PostgreSQL backend ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(write: Callable[[int], None], pid: int, n: int) -> dict[str, float]:
    """``write(k)`` for k in 0..n-1 (after 50 unmeasured), with CPU and wall time per call."""
    for k in range(50):
        write(-1 - k)
    b0, c0, w0 = backend_seconds(pid), time.process_time(), time.perf_counter()
    for k in range(n):
        write(k)
    w1, c1, b1 = time.perf_counter(), time.process_time(), backend_seconds(pid)
    return {"client_cpu_us": round((c1 - c0) / n * 1e6, 1), "database_cpu_us": round((b1 - b0) / n * 1e6, 1), "wall_us": round((w1 - w0) / n * 1e6, 1)}


def gateway_writer(url: str, prepare: bool) -> tuple[Callable[[int], None], int, Callable[[], None]]:
    """A Store on one pooled connection, a job in processing, and a writer of its progress events."""
    engine = make_engine(url, pool_size=1, max_overflow=0)
    store = Store(engine, prepare_statements=prepare)
    ext = "prepared-" + uuid.uuid4().hex[:10]
    with store.transaction() as w:
        w.register("worker", ext, None, None, None, who="bench")
    base = datetime.now(UTC) - timedelta(hours=1)

    def write(k: int) -> None:
        pe = ProviderEvent(event_id=f"{ext}-{k}-{uuid.uuid4().hex[:6]}", external_id=ext, occurred_at=base + timedelta(milliseconds=k + 100),
                           state=State.PROCESSING, type="job.processing", progress={"current": k, "total": 10**6})
        store.write(lambda w: w.record_event("worker", pe))

    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.rollback()
    return write, pid, engine.dispose


def naive_writer(url: str) -> tuple[Callable[[int], None], int, Callable[[], None]]:
    """The docs' handler's database work: INSERT the event, COMMIT (psycopg's default preparing)."""
    create_naive_table(url)
    engine = make_engine(url, pool_size=1, max_overflow=0, connect_args={"prepare_threshold": 5})
    events = naive_table()

    def write(k: int) -> None:
        with engine.begin() as conn:
            conn.execute(insert(events).values(event_id=uuid.uuid4().hex, payload={"progress": {"current": k}}))

    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.rollback()
    return write, pid, engine.dispose


def main() -> None:
    n = int(os.environ.get("BENCH_PREPARED_N", "3000"))
    out: dict[str, Any] = {"setup": f"one process, no gevent, one connection each; {n} webhooks per run, rounds alternating; PostgreSQL backend CPU from /proc"}
    runs: dict[str, list[dict[str, float]]] = {"prepared": [], "text": [], "naive_insert_commit": []}
    url, drop = make_database("postgres", Path(tempfile.mkdtemp(prefix="bench-prepared-")))
    try:
        for _ in range(2):
            for name, make in (("prepared", lambda: gateway_writer(url, True)), ("text", lambda: gateway_writer(url, False)), ("naive_insert_commit", lambda: naive_writer(url))):
                write, pid, close = make()
                try:
                    runs[name].append(measure(write, pid, n))
                finally:
                    close()
    finally:
        drop()
    out["runs"] = runs
    out["database_cpu_prepared_to_text"] = round(sum(r["database_cpu_us"] for r in runs["prepared"]) / sum(r["database_cpu_us"] for r in runs["text"]), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
