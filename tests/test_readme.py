"""The README's example, as written: its shell block is parsed out of README.md and run by bash
against a real gunicorn gateway with the demo configuration (config/demo.toml, config/demo.env),
as `make serve` runs it. Only the address changes: the test server's free port for 8000."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import requests

from gateway.migrate import upgrade
from tests.conftest import ARTIFACTS
from tests.servers import ROOT, Server

DEMO_URL = "http://127.0.0.1:8000"


def demo_env() -> dict[str, str]:
    """config/demo.env as the Makefile and `set -a; . config/demo.env` read it."""
    lines = (ROOT / "config" / "demo.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_][A-Z0-9_]*=", line))


def readme_example() -> str:
    """The first ```sh block of the README's "Using it" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_works_as_written(tmp_path: Path) -> None:
    script = readme_example()
    assert DEMO_URL in script and "gateway send stripe" in script
    db = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(db)
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**demo_env(), "DATABASE_URL": db, "GATEWAY_CONFIG": str(ROOT / "config" / "demo.toml")}
    srv = Server(env, workers=1, log_path=ARTIFACTS / f"readme-{os.getpid()}.log").start()
    try:
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DEMO_", "DATABASE_URL"))}
        shell_env["GATEWAY_URL"] = srv.url  # where `gateway send` posts (default http://127.0.0.1:8000)
        out = subprocess.run(["bash", "-e", "-c", script.replace(DEMO_URL, srv.url)], cwd=ROOT, env=shell_env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        registered = out.stdout.split("\n", 1)[0]
        assert '"state":"queued"' in registered.replace(" ", "") and '"source":"stripe"' in registered.replace(" ", "")
        assert 'gateway answered 200 {"status": "accepted"}' in out.stdout and "is now complete" in out.stdout
        job_id = re.search(r'"id":\s*"(job_[^"]+)"', registered).group(1)
        r = requests.get(f"{srv.url}/api/jobs/{job_id}", headers={"Authorization": "Bearer " + demo_env()["GATEWAY_API_KEYS"]}, timeout=10)
        assert r.json()["state"] == "complete" and r.json()["external_id"] == "pi_3Nx1042"
    finally:
        srv.stop()
