"""Liveness and readiness: the process, the database, and the migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from gateway.migrate import head_revision
from tests.conftest import make_config
from tests.servers import free_port


def test_healthz_and_readyz_when_all_is_well(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["status"] == "ok" and body["migrations"] == head_revision()
    assert body["database_ms"] >= 0 and r.headers["Cache-Control"] == "no-store"


def test_the_expected_head_is_read_once_per_app(app: Any) -> None:
    gw = app.extensions["gateway"]
    assert gw.alembic_head == head_revision()  # read when the blueprint was registered
    gw.alembic_head = "not-a-revision"  # so a probe compares with the cached value
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "not-a-revision" in r.get_json()["migrations"]


def test_readyz_says_migrations_are_behind(db_url: str, tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.db import make_engine

    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{tmp_path / 'behind.db'}"
    else:
        from tests.conftest import create_pg_database, drop_pg_database

        db_url = create_pg_database()
    try:
        from gateway.migrate import upgrade

        upgrade(db_url)
        engine = make_engine(db_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
        engine.dispose()
        client = create_app(make_config(db_url, tmp_path), background=False).test_client()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert "gateway migrate" in r.get_json()["migrations"]
        assert client.get("/healthz").status_code == 200  # alive, just not ready
    finally:
        if not db_url.startswith("sqlite"):
            drop_pg_database(db_url)


def test_readyz_when_the_database_is_unreachable(tmp_path: Path) -> None:
    from gateway.app import create_app

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    client = create_app(make_config(url, tmp_path), background=False).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["database"] == "unreachable"
    assert client.get("/healthz").status_code == 200
    m = client.get("/metrics")  # metrics still answer while the database is down
    assert m.status_code == 200 and b"gateway_webhooks" in m.data
