"""Shared fixtures: a fresh database per backend (SQLite file, PostgreSQL database), the app
on it, real gunicorn servers, and the standard test sources.

PostgreSQL is required when GATEWAY_REQUIRE_POSTGRES=1 (CI sets it): then its absence fails
loudly instead of skipping.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.config import Config
from tests import signing as _sig
from tests.servers import Server
from tests.signing import STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, STRIPE_SECRET_2

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
API_KEY = "test-api-key-0123456789"
SECRET_KEY = "test-secret-key-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

#: environment every test app and server gets: the secrets named by TEST_SOURCES
TEST_ENV = {
    "GATEWAY_SECRET_KEY": SECRET_KEY,
    "GATEWAY_API_KEYS": API_KEY + ",second-api-key-abcdefgh",
    "WORKER_SECRETS": f"{STANDARD_SECRET},{STANDARD_SECRET_2}",
    "STRIPE_SECRETS": f"{STRIPE_SECRET},{STRIPE_SECRET_2}",
    "REPLICATE_SECRETS": f"{_sig.REPLICATE_SECRET},{_sig.REPLICATE_SECRET_2}",
    "GITHUB_SECRETS": f"{_sig.GITHUB_SECRET},{_sig.GITHUB_SECRET_2}",
    "TWILIO_TOKENS": f"{_sig.TWILIO_TOKEN},{_sig.TWILIO_TOKEN_2}",
    "MUX_SECRETS": f"{_sig.MUX_SECRET},{_sig.MUX_SECRET_2}",
    "RENDER_SECRETS": f"{_sig.RENDER_SECRET},{_sig.RENDER_SECRET_2}",
    "RENDER_API_KEY": "rnd_test_api_key_0123456789",
}

#: the sources of the test configuration, as TOML; adapters add theirs here
TEST_SOURCES = """
[sources.worker]
adapter = "standard"
secrets_env = "WORKER_SECRETS"

[sources.stripe]
adapter = "stripe"
secrets_env = "STRIPE_SECRETS"

[sources.auto]
adapter = "standard"
secrets_env = "WORKER_SECRETS"
auto_register = true

[sources.replicate]
adapter = "replicate"
secrets_env = "REPLICATE_SECRETS"

[sources.github]
adapter = "github"
secrets_env = "GITHUB_SECRETS"

[sources.twilio]
adapter = "twilio"
secrets_env = "TWILIO_TOKENS"
public_url = "https://gw.example.com/webhooks/twilio"

[sources.twilio-direct]
adapter = "twilio"
secrets_env = "TWILIO_TOKENS"

[sources.mux]
adapter = "mux"
secrets_env = "MUX_SECRETS"

[sources.render]
adapter = "render"
secrets_env = "RENDER_SECRETS"
api_key_env = "RENDER_API_KEY"
"""


def _require(name: str) -> bool:
    return os.environ.get(name) == "1"


def _pg_available() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def create_pg_database() -> str:
    """A fresh, migrated PostgreSQL database; its URL."""
    import psycopg

    name = f"gw_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    from gateway.migrate import upgrade

    upgrade(url)
    return url


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    why = _pg_available()
    if why:
        if _require("GATEWAY_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required (GATEWAY_REQUIRE_POSTGRES=1) but unreachable at {PG_ADMIN_URL}: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    url = create_pg_database()
    yield url
    drop_pg_database(url)


REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the Redis bus; required (a failure, not a skip) when GATEWAY_REQUIRE_REDIS=1."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        if _require("GATEWAY_REQUIRE_REDIS"):
            pytest.fail(f"Redis is required (GATEWAY_REQUIRE_REDIS=1) but unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "gateway.db"
    url = f"sqlite:///{path}"
    from gateway.migrate import upgrade

    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on both databases."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param])


def write_config(path: Path, extra_gateway: str = "", extra_sources: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        [gateway]
        allowed_origins = ["http://127.0.0.1", "http://localhost"]
        {extra_gateway}
        {TEST_SOURCES}
        {extra_sources}
    """))
    return path


def make_config(db_url: str, tmp_path: Path, **env: str) -> Config:
    from gateway.config import load_config

    cfg_path = write_config(tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.toml")
    return load_config({**TEST_ENV, "GATEWAY_CONFIG": str(cfg_path), "DATABASE_URL": db_url, **env})


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Any:
    from gateway.app import create_app

    app = create_app(make_config(db_url, tmp_path))
    yield app
    app.extensions["gateway"].background.stop()  # no dispatcher outlives its test (or its database)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def server_env(db_url: str, config_path: Path, **extra: str) -> dict[str, str]:
    return {**TEST_ENV, "GATEWAY_CONFIG": str(config_path), "DATABASE_URL": db_url, "GATEWAY_LOG_FORMAT": "json", **extra}


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One running gunicorn (2 gevent workers) per backend, started on first use, shared."""
    running: dict[str, Server] = {}
    yield running
    for srv in running.values():
        srv.stop()


@pytest.fixture
def server(db_url: str, servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    if db_url not in servers:
        d = tmp_path_factory.mktemp("server")
        cfg = write_config(d / "gateway.toml")
        ARTIFACTS.mkdir(exist_ok=True)
        log = ARTIFACTS / f"gunicorn-{'pg' if 'postgres' in db_url else 'sqlite'}-{os.getpid()}.log"
        servers[db_url] = Server(server_env(db_url, cfg), log_path=log).start()
    return servers[db_url]


def register(base_or_client: Any, source: str = "worker", external_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """Register a job through the API (a test client or a base URL); returns {job, token}."""
    body = {"source": source, "external_id": external_id or "ext-" + uuid.uuid4().hex[:12], **fields}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if isinstance(base_or_client, str):
        r = requests.post(base_or_client + "/api/jobs", json=body, headers=headers, timeout=10)
        assert r.status_code in (200, 201), r.text
        return r.json()
    r = base_or_client.post("/api/jobs", json=body, headers=headers)
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    return r.get_json()
