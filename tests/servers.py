"""Real gunicorn servers for end-to-end tests: started as subprocesses on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gateway" / "gunicorn_conf.py"  # what `gateway serve` runs with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A gunicorn gevent server running ``wsgi:app`` with the given environment."""

    env: Mapping[str, str]
    workers: int = 2
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()
    app: str = "wsgi:app"
    argv: tuple[str, ...] | None = None  # a whole command instead of gunicorn's (e.g. ``gateway serve``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        argv = self.argv or (
            sys.executable, "-m", "gunicorn", self.app, "--config", str(GUNICORN_CONF), "--worker-class", "gevent",
            "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}", "--no-control-socket", "--timeout", "30",
            "--graceful-timeout", "5", "--worker-connections", "5000", *self.extra_args,
        )
        self.proc = subprocess.Popen(
            list(argv),
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready in {timeout}s; log: {self.log_path}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
