"""Console search (gateway.support.find_jobs) and migration 0007_search: the lookups find what a
ticket carries on both databases, and on PostgreSQL every statement the search sends can be
answered from an index (pg_trgm GIN for substrings) rather than a scan of the table."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event, text

from gateway.db import make_engine
from gateway.models import POSTGRES_SEARCH_INDEXES
from gateway.store import Store
from gateway.support import find_jobs
from tests.conftest import register


def _store(client: Any) -> Store:
    return client.application.extensions["gateway"].store  # type: ignore[no-any-return]


def test_substrings_ignore_case_and_take_wildcards_literally(client: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    percent = register(client, label=f"Invoice {tag} 100% done")["job"]
    register(client, label=f"invoice {tag} 1000 done")
    under = register(client, external_id=f"EXT_{tag}_a")["job"]
    register(client, external_id=f"EXTx{tag}xa")
    store = _store(client)

    assert {f.label for f in find_jobs(store, f"INVOICE {tag}")} == {f"Invoice {tag} 100% done", f"invoice {tag} 1000 done"}
    assert [(f.job_id, f.matched) for f in find_jobs(store, f"{tag} 100%")] == [(percent["id"], "label")]
    assert [(f.job_id, f.matched) for f in find_jobs(store, f"t_{tag}_")] == [(under["id"], "part of external id")]


def test_a_whole_job_id_is_the_only_answer(client: Any) -> None:
    job = register(client, label="whole id")["job"]
    register(client, external_id=job["id"] + "-x")  # would match as a substring
    found = find_jobs(_store(client), job["id"])
    assert [(f.job_id, f.matched) for f in found] == [(job["id"], "id")]
    prefix = find_jobs(_store(client), job["id"][:-2])
    assert [f.matched for f in prefix] == ["id prefix", "part of external id"]
    assert prefix[0].job_id == job["id"]


def test_postgres_search_is_served_by_indexes(pg_url: str) -> None:
    """Every statement find_jobs sends, EXPLAINed with sequential scans priced out: none needs one."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            names = set(conn.scalars(text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")))
        assert set(POSTGRES_SEARCH_INDEXES) <= names
        assert {"ix_jobs_external_id", "ix_job_keys_external_id", "ix_events_event_id", "ix_deliveries_request_id"} <= names

        sent: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, params, _ctx, _many: sent.append((sql, params)))
        store = Store(engine)
        for q in ("job_nothing", "ext-nothing", "dlv_12345", "render of invoice"):
            find_jobs(store, q)
        statements = [(sql, params) for sql, params in sent if sql.lstrip().upper().startswith("SELECT") and "jobs" in sql]
        assert len(statements) >= 8
        used: set[str] = set()
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cur:
                cur.execute("SET enable_seqscan = off")
                for sql, params in statements:
                    cur.execute("EXPLAIN " + sql, params)
                    plan = "\n".join(row[0] for row in cur.fetchall())
                    assert "Seq Scan" not in plan, f"{sql}\n{plan}"
                    used |= {name for name in names if f" {name}" in plan}
            raw.rollback()
        assert {"ix_jobs_label_trgm", "ix_jobs_external_id_trgm", "ix_jobs_id_prefix", "ix_deliveries_request_id"} <= used
    finally:
        engine.dispose()
