"""Engines and transactions for the two supported databases.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction
starts with ``BEGIN IMMEDIATE`` so concurrent writers in several worker processes queue up
instead of failing with "database is locked". ``synchronous=FULL`` because a webhook is
acknowledged only once its event is durable.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

DEFAULT_SQLITE_URL = "sqlite:///gateway.db"
READ_ONLY = "gateway_read_only"  # execution option: a transaction that only reads


def default_database_url() -> str:
    """The SQLite file under the working directory, as an absolute URL."""
    return "sqlite:///" + os.path.join(os.getcwd(), "gateway.db")


def make_engine(url: str, **kw: Any) -> Engine:
    """An engine for ``url`` with the settings each backend needs for several writer processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, **kw)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # a read-only session (Store.reading) reads a WAL snapshot: it never waits for,
            # nor holds, the write lock
            read_only = conn.get_execution_options().get(READ_ONLY)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", 5)
    kw.setdefault("max_overflow", 10)
    kw.setdefault("pool_timeout", 5)
    connect_args = kw.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 5)
    return create_engine(url, connect_args=connect_args, **kw)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
