"""The plugin API for real: a throwaway adapter package is ``pip install``ed into this venv,
found through the ``gateway.adapters`` entry points by a freshly started gunicorn, and a
webhook posted to it lands in a job. A broken plugin is named and the others keep working."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_ENV, make_config, register, server_env, write_config
from tests.servers import Server

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
DISTRIBUTIONS = ("gateway-example-adapter", "gateway-broken-adapter", "gateway-token-adapter")
ACME_SECRET = "acme-plugin-secret-1"
ACME_SOURCE = """
[sources.acme]
adapter = "example"
secrets_env = "ACME_SECRETS"

[sources.beacon]
adapter = "beacon"
secrets_env = "BEACON_TOKENS"
"""
BEACON_TOKENS = ("beacon-endpoint-token-new", "beacon-endpoint-token-old")


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Both plugin packages installed into the running venv (copies, so the tree stays clean)."""
    work = tmp_path_factory.mktemp("plugins")
    isolation = [] if importlib.util.find_spec("wheel") is None else ["--no-build-isolation"]
    try:
        for name in ("example_adapter", "broken_adapter", "token_adapter"):
            shutil.copytree(PLUGINS / name, work / name)
            done = _pip("install", "--no-deps", *isolation, str(work / name))
            assert done.returncode == 0, done.stderr[-2000:]
        yield
    finally:
        _pip("uninstall", "-y", *DISTRIBUTIONS)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**(env or {}), "PATH": "/usr/bin:/bin"}, cwd=str(Path(__file__).resolve().parents[2]))


def test_gateway_adapters_lists_plugins_and_names_the_broken_one(installed_plugins: None) -> None:
    out = _cli("adapters")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "gateway_example_adapter:ExampleAdapter (gateway-example-adapter)" in lines["example"]
    assert "BROKEN" in lines["broken"] and "needs acme-sdk" in lines["broken"]
    for builtin in ("stripe", "standard", "replicate", "github", "twilio", "mux", "render"):
        assert "BROKEN" not in lines[builtin]


def test_a_source_on_the_broken_plugin_stops_start_up_naming_it(installed_plugins: None, sqlite_url: str, tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.errors import ConfigError

    cfg = write_config(tmp_path / "gateway.toml", extra_sources='[sources.bad]\nadapter = "broken"\nsecrets_env = "ACME_SECRETS"\n')
    config = load_config({**TEST_ENV, "ACME_SECRETS": ACME_SECRET, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": sqlite_url})
    with pytest.raises(ConfigError) as info:
        create_app(config, background=False)
    assert "sources.bad.adapter" in str(info.value) and "failed to load" in str(info.value) and "ImportError" in str(info.value)
    # without that source the same gateway starts, broken plugin installed or not
    assert create_app(make_config(sqlite_url, tmp_path), background=False).extensions["gateway"].registry.broken.keys() == {"broken"}


@pytest.fixture
def plugin_server(installed_plugins: None, db_url: str, tmp_path: Path) -> Iterator[Server]:
    cfg = write_config(tmp_path / "gateway.toml", extra_sources=ACME_SOURCE)
    log = tmp_path / "gunicorn.log"
    srv = Server(server_env(db_url, cfg, ACME_SECRETS=ACME_SECRET, BEACON_TOKENS=",".join(BEACON_TOKENS)), log_path=log, workers=1).start()
    try:
        yield srv
    finally:
        srv.stop()


def _acme(body: dict[str, Any], secret: str = ACME_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    t = str(int(time.time()))
    digest = hmac.new(secret.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return raw, {"Acme-Signature": f"t={t},v1={digest}", "Content-Type": "application/json"}


def test_webhook_to_a_pip_installed_plugin_through_gunicorn(plugin_server: Server) -> None:
    base = plugin_server.url
    started = plugin_server.log_path.read_text()  # type: ignore[union-attr]
    assert "adapter plugin failed to load" in started and '"adapter": "broken"' in started
    ext = "acme-" + str(time.time_ns())
    job_id = register(base, source="acme", external_id=ext)["job"]["id"]
    for n, (status, state) in enumerate([("waiting", "queued"), ("running", "processing"), ("done", "complete")]):
        raw, headers = _acme({"id": f"{ext}-evt-{n}", "job": ext, "status": status, "at": 1764331200 + n})
        r = requests.post(base + "/webhooks/acme", data=raw, headers=headers, timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "accepted"}, r.text
        job = requests.get(f"{base}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TEST_ENV['GATEWAY_API_KEYS'].split(',')[0]}"}, timeout=10).json()
        assert job["state"] == state and job["source"] == "acme"
    raw, headers = _acme({"id": "x", "job": ext, "status": "done", "at": 1764331200}, secret="wrong")
    assert requests.post(base + "/webhooks/acme", data=raw, headers=headers, timeout=10).status_code == 401
    # the built-ins work beside the plugins, the broken one included
    assert requests.post(base + "/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}, timeout=10).status_code == 401


def test_a_header_token_plugin_through_gunicorn(plugin_server: Server) -> None:
    """A provider that signs no body (signs_body = False): either rotating token is accepted, a
    missing, wrong or near-miss token is a 401, and events move the job."""
    base = plugin_server.url
    task = "task-" + str(time.time_ns())
    job_id = register(base, source="beacon", external_id=task)["job"]["id"]

    def post(token: str | None, n: int, phase: str) -> requests.Response:
        body = json.dumps({"delivery": f"{task}-{n}", "task": task, "phase": phase, "at": f"2026-11-28T12:00:0{n}Z"})
        headers = {"Content-Type": "application/json", **({"X-Beacon-Token": token} if token is not None else {})}
        return requests.post(base + "/webhooks/beacon", data=body, headers=headers, timeout=10)

    for token in (None, "", "beacon-endpoint-token-ne", BEACON_TOKENS[0] + "x", "wrong"):
        r = post(token, 9, "finished")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature", token
    assert post(BEACON_TOKENS[1], 1, "running").json() == {"status": "accepted"}
    assert post(BEACON_TOKENS[0], 2, "finished").json() == {"status": "accepted"}
    job = requests.get(f"{base}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TEST_ENV['GATEWAY_API_KEYS'].split(',')[0]}"}, timeout=10).json()
    assert job["state"] == "complete"
