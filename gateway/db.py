"""Engines and transactions for the two supported databases.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction
starts with ``BEGIN IMMEDIATE`` so concurrent writers in several worker processes queue up
instead of failing with "database is locked". ``synchronous=FULL`` because a webhook is
acknowledged only once its event is durable.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

DEFAULT_SQLITE_URL = "sqlite:///gateway.db"
READ_ONLY = "gateway_read_only"  # execution option: a transaction that only reads
PING_AFTER_IDLE_S = 2.0  # a pooled PostgreSQL connection idle this long is pinged before use


def default_database_url(folder: str | None = None) -> str:
    """The SQLite file ``gateway.db`` in ``folder`` (the working directory), as an absolute URL."""
    return "sqlite:///" + os.path.join(folder or os.getcwd(), "gateway.db")


def normalise_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` (what most hosts hand out) as ``postgresql+psycopg://``,
    the driver the gateway ships with; any other URL unchanged."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show only what follows the credentials
        return url.split("@")[-1]


def sqlite_path(url: str) -> str | None:
    """The file a SQLite URL names (None for other databases and in-memory ones)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def make_engine(url: str, **kw: Any) -> Engine:
    """An engine for ``url`` with the settings each backend needs for several writer processes."""
    url = normalise_database_url(url)
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
    kw.setdefault("pool_size", 5)
    kw.setdefault("max_overflow", 10)
    kw.setdefault("pool_timeout", 5)
    connect_args = kw.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 5)
    # the write path prepares its statements itself, once per connection (gateway/store/fastpath.py);
    # psycopg's own automatic preparation would DEALLOCATE ALL on every rollback, theirs included
    connect_args.setdefault("prepare_threshold", None)
    engine = create_engine(url, connect_args=connect_args, **kw)
    _ping_when_idle(engine, PING_AFTER_IDLE_S)
    return engine


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Pessimistic disconnect handling that costs nothing under load: a connection is pinged on
    checkout only when it has sat in the pool ``idle_s`` or longer (where a database restart or
    an idle-connection timeout would have broken it). A connection in steady use is handed out
    as it is; if the server dies mid-use, the error invalidates it and ``Store.write`` retries."""

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()
        if dbapi_conn is not None and dbapi_conn.autocommit:  # never pooled in autocommit (see gateway.store.fastpath)
            dbapi_conn.autocommit = False

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return  # brand new, or in steady use
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            # the pool discards this connection and checks out (or opens) another
            raise exc.DisconnectionError(f"pooled connection failed its ping: {err}") from err


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
