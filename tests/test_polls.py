"""Polls answered from memory (gateway/polls.py, relay/fresh.py): after every kind of change —
a new version, and JSON that moves without one (``updated_at``, ``queue.total``) — a poll's
200 is byte for byte the job as the database holds it, and on a bus that carries the job's
JSON (PostgreSQL NOTIFY, Redis) it came from memory, with no database read.

Two apps on one database: A takes the webhooks, B answers the polls, so every change reaches
B through the bus as it would reach another worker or host."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gateway.jobjson import job_text
from tests.conftest import TEST_ENV, register, write_config
from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers

BUSES = ["sqlite", "postgres", "postgres-redis", "sqlite-redis"]


def _app(db_url: str, tmp_path: Path, extra: str) -> Any:
    from gateway.app import create_app
    from gateway.config import load_config

    cfg = write_config(tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.toml", extra)
    app = create_app(load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url}))
    relay = app.extensions["gateway"].relay
    relay.start()
    connected = getattr(relay.bus, "connected", None)
    assert connected is None or connected.wait(10)
    return app


@pytest.fixture(params=BUSES)
def apps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, str]]:
    """(A, B, the bus): the database's own bus, or Redis."""
    db, _, bus = request.param.partition("-")
    db_url = request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[db])
    extra = f'bus = "redis"\nredis_url = "{request.getfixturevalue("redis_url")}"\n' if bus == "redis" else ""
    a, b = _app(db_url, tmp_path, extra), _app(db_url, tmp_path, extra)
    yield a, b, request.param
    for app in (a, b):
        app.extensions["gateway"].background.stop()


def reads(app: Any) -> tuple[float, float]:
    """B's ``gateway_poll_reads_total`` from memory and from the database."""
    registry = app.extensions["gateway"].metrics.registry
    return tuple(registry.get_sample_value("gateway_poll_reads_total", {"from": f}) or 0.0 for f in ("memory", "database"))  # type: ignore[return-value]


def in_database(app: Any, job_id: str) -> bytes:
    """The job's JSON as a database read gives it, as a poll's body."""
    job = app.extensions["gateway"].store.get_job(job_id)
    return (job_text(job) + "\n").encode()


def webhook(app: Any, external_id: str, state: str, offset_ms: int, **fields: Any) -> None:
    body = standard_body(external_id, state, occurred_at=iso_now(offset_ms), **fields)
    r = app.test_client().post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body))
    assert r.status_code == 200, r.get_data(as_text=True)


def test_a_200_poll_is_the_database_json_and_comes_from_memory(apps: tuple[Any, Any, str]) -> None:
    a, b, bus = apps
    memory = bus != "sqlite"  # SQLite's change feed has no barrier: B always reads
    queue = "q-" + uuid.uuid4().hex[:8]
    reg = register(a.test_client(), queue=queue)
    job_id, ext = reg["job"]["id"], reg["job"]["external_id"]
    browser = b.test_client()
    headers = {"Authorization": f"Bearer {reg['token']}"}
    first = browser.get(f"/api/jobs/{job_id}", headers=headers)
    assert first.status_code == 200 and first.get_data() == in_database(a, job_id)

    def poll(expect_memory: bool, why: str) -> None:
        before = reads(b)
        for conditional in (False, True):  # no tag, then an older version's
            r = browser.get(f"/api/jobs/{job_id}", headers={**headers, "If-None-Match": f'"{job_id}.0"'} if conditional else headers)
            assert r.status_code == 200, why
            assert r.get_data() == in_database(a, job_id), f"{why}: the poll's JSON is not the database's"
            assert r.headers["ETag"] == f'"{job_id}.{r.get_json()["version"]}"'
        memory_reads, db_reads = (x - y for x, y in zip(reads(b), before, strict=True))
        if memory and expect_memory:
            assert (memory_reads, db_reads) == (2, 0), f"{why}: read the database"
        elif memory:
            assert (memory_reads, db_reads) == (1, 1), f"{why}: one read, then memory"
        else:
            assert (memory_reads, db_reads) == (0, 2), why
        assert browser.get(f"/api/jobs/{job_id}", headers={**headers, "If-None-Match": r.headers["ETag"]}).status_code == 304
        # the writer's own process holds its commit's JSON too (handed over with the commit)
        assert a.test_client().get(f"/api/jobs/{job_id}", headers=headers).get_data() == in_database(a, job_id), why

    # a new version: its JSON came with the notice
    webhook(a, ext, "queued", 1, label="waiting", queue={"name": queue, "position": 1, "total": 5})
    poll(True, "label")
    # the provider's queue.total moves, its position does not: no new version
    webhook(a, ext, "queued", 2, queue={"name": queue, "position": 1, "total": 7})
    poll(False, "queue.total")
    webhook(a, ext, "processing", 3, progress={"current": 1, "total": 4})
    poll(True, "progress")
    # the same progress again, later: only updated_at moves, no new version
    version = browser.get(f"/api/jobs/{job_id}", headers=headers).get_json()["version"]
    webhook(a, ext, "processing", 4, progress={"current": 1, "total": 4})
    assert a.extensions["gateway"].store.get_job(job_id).version == version
    poll(False, "updated_at")
    webhook(a, ext, "processing", 5, label="nearly", progress={"current": 3, "total": 4})
    poll(True, "label and progress")
    # JSON over NOTIFY's 8,000 bytes: PostgreSQL sends the id and version only (B reads once),
    # Redis the JSON
    webhook(a, ext, "complete", 6, result={"url": "https://example.com/r", "ü": [1.5, None, {"b": 1, "a": 2}], "blob": "x" * 9000})
    poll(bus != "postgres", "complete, over 8,000 bytes")


def test_long_polls_share_one_read_and_wake_with_the_database_json(apps: tuple[Any, Any, str]) -> None:
    """Twenty long-polls of one job on one process read it as one subscription would, not once
    each to start and once each to answer: the first poll's read, and the hub's fetch for each
    notice whose JSON the bus did not carry (SQLite: the registration's and the change's). Every
    answer is the job as the database holds it."""
    a, b, bus = apps
    reg = register(a.test_client())
    job_id, ext = reg["job"]["id"], reg["job"]["external_id"]
    headers = {"Authorization": f"Bearer {reg['token']}", "If-None-Match": f'"{job_id}.{reg["job"]["version"]}"'}
    job_reads = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM jobs" in statement and "jobs.state" in statement:  # a whole job, not the resync's versions
            job_reads.append(statement)

    engine = b.extensions["gateway"].store.engine
    event.listen(engine, "before_cursor_execute", count)
    answers: list[Any] = []
    polls = [threading.Thread(target=lambda: answers.append(b.test_client().get(f"/api/jobs/{job_id}?wait=20", headers=headers)))
             for _ in range(20)]
    try:
        for p in polls:
            p.start()
        hub = b.extensions["gateway"].relay.hub
        deadline = time.monotonic() + 15
        while len(hub.watchers.get(job_id, ())) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(hub.watchers.get(job_id, ())) == 20, "the long-polls are not all waiting"
        webhook(a, ext, "processing", 1, progress={"current": 1, "total": 4})
        for p in polls:
            p.join(20)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [r.status_code for r in answers] == [200] * 20
    assert all(r.get_data() == in_database(a, job_id) for r in answers)
    assert len(job_reads) <= 3, f"{bus}: {len(job_reads)} reads of the job for 20 long-polls"
