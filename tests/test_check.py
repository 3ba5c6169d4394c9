"""`gateway check` and `gateway serve` stop a broken set-up with one message naming the key (and
the key meant, when one was misspelt), never a traceback, before any worker starts; the CLI
resolves configuration and database as the server does and never creates a database to read."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, TEST_ENV, write_config
from tests.servers import free_port

GATEWAY = str(Path(sys.executable).with_name("gateway"))
GOOD_SOURCE = "[sources.s]\nadapter = 'stripe'\nsecrets_env = 'S'\n"


def gateway(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "DATABASE_URL")}
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})}, timeout=timeout)


BROKEN = [
    ("[gateway]\nmax_body_byte = 1\n", {}, "gateway.max_body_byte", "max_body_bytes"),
    ("[gateway]\nbus = 'kafka'\n", {}, "gateway.bus", None),
    ("[gateway]\ntoken_ttl = '1h'\n", {}, "gateway.token_ttl", None),
    ("[gateway]\nallowed_origins = [1]\n", {}, "gateway.allowed_origins", None),
    ("[source.s]\nadapter = 'stripe'\n", {}, "source", "sources"),
    ("[sources.s]\nadapter = 'strpe'\nsecrets_env = 'S'\n", {}, "sources.s.adapter", "stripe"),
    ("[sources.s]\nadaptr = 'stripe'\nsecrets_env = 'S'\n", {}, "sources.s.adaptr", "adapter"),
    ("[sources.s]\nadapter = 'stripe'\nsecret_env = 'S'\n", {}, "sources.s.secret_env", "secrets_env"),
    ("[sources.s]\nadapter = 'stripe'\nsecrets_env = 'NOT_SET_ANYWHERE'\n", {}, "sources.s.secrets_env", None),
    ("[sources.s]\nadapter = 'stripe'\nsecrets_file = '/nonexistent/secret'\n", {}, "sources.s.secrets_file", None),
    (GOOD_SOURCE + "colour = 'red'\n", {}, "sources.s.colour", None),
    ("[sources.Bad]\nadapter = 'stripe'\nsecrets_env = 'S'\n", {}, "sources.Bad", None),
    ("[sources.s]\nadapter = 'stripe'\nsecrets_env = 'S'\nstall_after = 0\n", {}, "sources.s.stall_after", None),
    ("not toml [", {}, "GATEWAY_CONFIG", None),
    (GOOD_SOURCE, {"GATEWAY_SECRET_KEY": "short"}, "GATEWAY_SECRET_KEY", None),
    (GOOD_SOURCE, {"GATEWAY_CONFIG": "/nonexistent/gateway.toml"}, "GATEWAY_CONFIG", None),
]


def env_for(tmp_path: Path, toml: str, extra: dict[str, str], db: str | None = None) -> dict[str, str]:
    path = tmp_path / "broken.toml"
    path.write_text(toml)
    return {"GATEWAY_SECRET_KEY": "k" * 32, "S": "whsec_abc", "GATEWAY_CONFIG": str(path),
            "DATABASE_URL": db or f"sqlite:///{tmp_path / 'gw.db'}", **extra}


@pytest.mark.parametrize("toml,extra,key,meant", BROKEN, ids=[b[2] + ("-" + b[3] if b[3] else "") for b in BROKEN])
def test_check_names_the_key_without_a_traceback(tmp_path: Path, toml: str, extra: dict[str, str], key: str, meant: str | None) -> None:
    out = gateway("check", cwd=tmp_path, env=env_for(tmp_path, toml, extra))
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    error = out.stderr.split("Error: ", 1)[1]
    assert error.startswith(key), error
    if meant:
        assert f"did you mean {meant!r}" in error
    assert "configuration:" in error and "database:" in error  # where it looked, in every error


def test_serve_stops_in_the_master_before_listening(tmp_path: Path) -> None:
    env = env_for(tmp_path, "[sources.s]\nadapter = 'strpe'\nsecrets_env = 'S'\n", {})
    out = gateway("serve", "--port", str(free_port()), "--workers", "1", cwd=tmp_path, env=env)
    assert out.returncode == 1
    assert "listening" not in out.stderr.lower() and "Booting worker" not in out.stderr and "Traceback" not in out.stderr
    assert "sources.s.adapter" in out.stderr and "did you mean 'stripe'" in out.stderr


def test_serve_refuses_a_database_that_was_never_migrated(tmp_path: Path) -> None:
    env = env_for(tmp_path, GOOD_SOURCE, {})
    out = gateway("serve", "--port", str(free_port()), "--workers", "1", cwd=tmp_path, env=env)
    assert out.returncode == 1 and "gateway migrate" in out.stderr and "listening" not in out.stderr.lower()
    assert not (tmp_path / "gw.db").exists()  # checked, not created


def test_a_missing_postgres_database_is_one_friendly_line(tmp_path: Path, pg_url: str) -> None:
    name = f"gw_missing_{uuid.uuid4().hex[:8]}"
    plain = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgres://").rsplit("/", 1)[0] + "/" + name
    for command in (("check",), ("find", "x"), ("migrate",)):
        out = gateway(*command, cwd=tmp_path, env=env_for(tmp_path, GOOD_SOURCE, {}, db=plain))
        assert out.returncode == 1, command
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) <= 3, out.stderr
        assert f"'{name}' does not exist" in out.stderr and "createdb" in out.stderr


def test_postgres_urls_as_hosts_hand_them_out_are_accepted(tmp_path: Path, pg_url: str) -> None:
    for scheme in ("postgres://", "postgresql://"):
        url = scheme + pg_url.split("://", 1)[1]
        out = gateway("check", cwd=tmp_path, env=env_for(tmp_path, GOOD_SOURCE, {}, db=url))
        assert out.returncode == 0, out.stderr
        assert "ready to serve" in out.stdout


def test_migrate_says_what_it_applied_then_that_nothing_was_left(tmp_path: Path) -> None:
    env = env_for(tmp_path, GOOD_SOURCE, {})
    first = gateway("migrate", cwd=tmp_path, env=env)
    assert first.returncode == 0 and "migration(s) to sqlite" in first.stderr and "0001" in first.stderr
    again = gateway("migrate", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "already up to date" in again.stderr and "applied" not in again.stderr
    assert gateway("check", cwd=tmp_path, env=env).returncode == 0


def test_read_only_commands_in_an_empty_folder_create_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {"GATEWAY_SECRET_KEY": "k" * 32}
    for command in (("find", "x"), ("trace", "job_x"), ("deliveries",), ("outbox",), ("sources",), ("check",), ("prune", "--dry-run"),
                    ("adapters",), ("send", "--list", "stripe")):
        out = gateway(*command, cwd=folder, env=env)
        assert "Traceback" not in out.stderr, (command, out.stderr)
        assert list(folder.iterdir()) == [], command
    out = gateway("find", "x", cwd=folder, env=env)
    assert out.returncode == 1 and f"no database at {folder / 'gateway.db'}" in out.stderr
    assert "from default: the working directory" in out.stderr


def test_the_project_file_is_found_from_a_subfolder_and_its_database_beside_it(tmp_path: Path) -> None:
    write_config(tmp_path / "gateway.toml")
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    assert gateway("migrate", cwd=tmp_path, env=TEST_ENV).returncode == 0
    out = gateway("-v", "sources", cwd=sub, env=TEST_ENV)
    assert out.returncode == 0, out.stderr
    assert f"configuration: {tmp_path / 'gateway.toml'} (from the project file gateway.toml)" in out.stderr
    assert f"{tmp_path / 'gateway.db'} (from default: beside gateway.toml)" in out.stderr
    assert "stripe" in out.stdout and "worker" in out.stdout
    assert gateway("-v", "find", "x", cwd=sub, env=TEST_ENV).returncode == 1  # found the database: no job, no error about it
    assert not (sub / "gateway.db").exists()


def test_flags_come_before_the_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flag.toml")
    env = {**TEST_ENV, "GATEWAY_CONFIG": "/nonexistent.toml", "DATABASE_URL": "sqlite:////nonexistent/x.db"}
    out = gateway("--config", str(cfg), "--database-url", f"sqlite:///{tmp_path / 'f.db'}", "-v", "sources", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "(from --config)" in out.stderr and "(from --database-url)" in out.stderr


def test_serve_from_a_subfolder_uses_the_project_file_and_its_database(tmp_path: Path) -> None:
    import time

    import requests

    from tests.conftest import API_KEY

    write_config(tmp_path / "gateway.toml")
    sub = tmp_path / "app" / "web"
    sub.mkdir(parents=True)
    assert gateway("migrate", cwd=sub, env=TEST_ENV).returncode == 0  # creates the database beside gateway.toml
    assert (tmp_path / "gateway.db").exists() and not (sub / "gateway.db").exists()
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    base = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "DATABASE_URL")}
    proc = subprocess.Popen([GATEWAY, "serve", "--port", str(port), "--workers", "1"], cwd=sub, env={**base, **TEST_ENV},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        r = requests.post(url + "/api/jobs", json={"source": "worker", "external_id": "sub-1"}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 201, (tmp_path / "serve.log").read_text()[-2000:]
        out = gateway("find", "sub-1", cwd=tmp_path, env=TEST_ENV)  # the CLI, from the project root, sees the same job
        assert out.returncode == 0 and r.json()["job"]["id"] in out.stdout
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
