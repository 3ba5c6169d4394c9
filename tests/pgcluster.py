"""A private PostgreSQL cluster for tests that stop and start the database on purpose.

The machine's shared PostgreSQL (127.0.0.1:5432) is never touched: this module runs
``initdb`` in a temporary directory owned by the ``postgres`` user, starts the cluster on a
free loopback port with trust authentication, and can stop it (``immediate`` = a crash, no
shutdown checkpoint) and start it again on the same port and data. PostgreSQL refuses to run
as root, so every command runs as ``postgres`` through ``runuser`` when we are root.

Usage (see tests/test_trust_outage.py)::

    with PgCluster.create() as pg:
        url = pg.database("gw")        # created and migrated
        pg.stop()                      # the outage
        pg.start()                     # recovery
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str | None:
    """None when a private cluster can be made here, else why not."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


def require() -> None:
    """For a test that needs a private cluster: skip when one cannot be made here (``make test``
    on a laptop), fail when GATEWAY_REQUIRE_POSTGRES=1 (CI). The one rule every such test uses."""
    import pytest

    why = available()
    if why:
        if os.environ.get("GATEWAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"a private PostgreSQL cluster is required (GATEWAY_REQUIRE_POSTGRES=1): {why}")
        pytest.skip(f"no private PostgreSQL cluster: {why}")


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, capture_output=True, text=True, **kw)


@dataclass
class PgCluster:
    """One throw-away PostgreSQL cluster on a free loopback port."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of a database in this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[PgCluster]:
        """Initialise and start a cluster; stop it and delete its files on exit."""
        root = Path(tempfile.mkdtemp(prefix="gw-pgcluster-"))
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        cluster = cls(root)
        try:
            cluster._initdb()
            cluster.start()
            yield cluster
        finally:
            cluster.stop(mode="immediate")
            shutil.rmtree(root, ignore_errors=True)

    def _initdb(self) -> None:
        _as_postgres(["mkdir", "-p", str(self.socket_dir)], check=True)
        out = _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        if out.returncode:
            raise RuntimeError(f"initdb failed: {out.stderr}")

    def start(self, timeout: float = 30) -> None:
        """Start (or restart after ``stop``) on the same port and data directory; wait until it answers."""
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
        out = _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "-t", str(int(timeout)), "start"])
        if out.returncode:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {out.stderr}\n{log[-2000:]}")
        self._wait_ready(timeout)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the cluster; ``immediate`` aborts every backend like a crash (recovery on start)."""
        if (self.data / "postmaster.pid").exists():
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def running(self) -> bool:
        return _as_postgres([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"]).returncode == 0

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL on port {self.port} did not become ready")

    def database(self, name: str, *, migrate: bool = True) -> str:
        """Create a database (migrated to the current schema unless told otherwise); its URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        if migrate:
            from gateway.migrate import upgrade

            upgrade(url)
        return url
