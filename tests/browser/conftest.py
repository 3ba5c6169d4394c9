"""Real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright for Python) against
a real gunicorn gateway with the demo switched on and a request log for timing checks.

Chromium missing: the browser tests fail when GATEWAY_REQUIRE_BROWSER=1 (CI), else skip.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import API_KEY, ARTIFACTS, TEST_SOURCES, server_env
from tests.servers import Server, free_port
from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers

CHROMIUM = os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    # Playwright's WebSocket pass-through (route_web_socket + connect_to_server) opens its socket
    # from outside the page; Chromium's Local Network Access check would block that on loopback.
    "--disable-features=LocalNetworkAccessChecks",
]
SCREENSHOTS = ARTIFACTS / "screenshots"
SUPPORT_EMAIL = "help@gateway.test"
DEMO_SECRET = "whsec_ZGVtby10ZXN0LXNpbXVsYXRvci1zZWNyZXQtMzJieXQ="
ENDPOINT_SECRET = "whsec_Zm9yd2FyZC1zZWNyZXQtZm9yLXRoZS10ZXN0cy0wMDE="

#: a page the tests serve at the gateway's own origin (through Playwright routing, not the app)
HARNESS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>job-status harness</title>
<script type="module" src="/static/jobstatus.js"></script>
<style>body { font-family: sans-serif; margin: 16px; width: 440px; }</style></head>
<body><job-status id="status" support-email="%s"></job-status></body></html>""" % SUPPORT_EMAIL


@dataclass
class Gateway:
    """The running gateway under test and the helpers that drive it like its outside parties."""

    server: Server
    request_log: Path

    @property
    def url(self) -> str:
        return self.server.url

    def register(self, job_id: str | None = None, queue: str | None = None, label: str | None = None) -> dict[str, Any]:
        """Register a worker-source job as an integrator's backend does; {job, token, external_id}."""
        external_id = "ext-" + uuid.uuid4().hex[:12]
        body: dict[str, Any] = {"source": "worker", "external_id": external_id, "queue": queue or "q-" + uuid.uuid4().hex[:8]}
        if job_id:
            body["id"] = job_id
        if label:
            body["label"] = label
        r = requests.post(self.url + "/api/jobs", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 201, r.text
        return {**r.json(), "external_id": external_id}

    def token(self, job_id: str) -> str:
        """A browser token (read, retry) for a job id, registered or not yet."""
        r = requests.post(self.url + "/api/tokens", json={"job": job_id, "scopes": ["read", "retry"]}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def webhook(self, external_id: str, state: str, **fields: Any) -> None:
        """One Standard-Webhooks-signed delivery from the `worker` source, as a provider sends it."""
        body = standard_body(external_id, state, iso_now(), **fields)
        r = requests.post(self.url + "/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text

    def job(self, job_id: str) -> dict[str, Any]:
        r = requests.get(self.url + f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def requests_since(self, mark: float, path: str, method: str = "GET") -> list[float]:
        """Arrival times (server clock, s) of requests for exactly this path after ``mark``."""
        times = []
        for line in self.request_log.read_text().splitlines():
            at, m, p = line.split(" ", 2)
            if m == method and p == path and float(at) >= mark:
                times.append(float(at))
        return sorted(times)


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gunicorn (2 gevent workers) on SQLite with the demo on, shared by the browser tests."""
    d = tmp_path_factory.mktemp("browser")
    url_db = f"sqlite:///{d / 'gateway.db'}"
    from gateway.migrate import upgrade

    upgrade(url_db)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    cfg = d / "gateway.toml"
    cfg.write_text(textwrap.dedent(f"""
        [gateway]
        allowed_origins = [{json.dumps(origin)}]
        demo = true
        support_email = {json.dumps(SUPPORT_EMAIL)}
        forward_retry_for = 0
        {TEST_SOURCES}
        [sources.demo]
        adapter = "standard"
        secrets_env = "DEMO_SECRETS"
        # the console's sources page: a failed job owes this endpoint a message, dead at its first refused try
        [endpoints.billing]
        url = "http://127.0.0.1:9/hooks"
        secret_env = "BILLING_ENDPOINT_SECRET"
        events = ["job.failed"]
    """))
    request_log = d / "requests.log"
    request_log.touch()
    ARTIFACTS.mkdir(exist_ok=True)
    env = server_env(url_db, cfg, DEMO_SECRETS=DEMO_SECRET, BILLING_ENDPOINT_SECRET=ENDPOINT_SECRET, GATEWAY_DEMO_URL=origin, GATEWAY_TEST_REQUEST_LOG=str(request_log))
    server = Server(env, port=port, log_path=ARTIFACTS / f"gunicorn-browser-{os.getpid()}.log",
                    extra_args=("--config", "python:tests.browser.request_log")).start()
    yield Gateway(server, request_log)
    server.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium, or `make browser-deps`)"
        if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " and GATEWAY_REQUIRE_BROWSER=1")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a polled change can take one 10 s backoff step
    # the tests instrument pages with Playwright's string predicates (an eval), which the gateway's
    # Content-Security-Policy forbids; tests/browser/test_csp.py checks the pages under the policy
    ctx = chromium.new_context(viewport={"width": 560, "height": 360}, bypass_csp=True)
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"uncaught errors in the page: {errors}"


def open_harness(page: Any, gw: Gateway, job_id: str | None = None, token: str | None = None, transports: str | None = None) -> Any:
    """Load the harness page at the gateway's origin; with a job, point <job-status> at it."""
    page.route(gw.url + "/__harness__", lambda route: route.fulfill(status=200, content_type="text/html", body=HARNESS))
    page.goto(gw.url + "/__harness__")
    page.wait_for_function("customElements.get('job-status') !== undefined")
    if transports:
        page.eval_on_selector("#status", "(el, t) => el.setAttribute('transports', t)", transports)
    if job_id:
        watch(page, job_id, token)
    return page.locator("#status")


def watch(page: Any, job_id: str, token: str | None) -> None:
    """Give the element its job, as a page does once its backend answered."""
    page.eval_on_selector("#status", "(el, [id, tok]) => { el.setAttribute('token', tok); el.setAttribute('job-id', id); }", [job_id, token or ""])


def new_job_id() -> str:
    return "job_test" + uuid.uuid4().hex[:16]


def screenshot(locator: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    locator.screenshot(path=str(path))
    return path


def wait_until(predicate: Any, timeout: float = 20, what: str = "condition", page: Any = None) -> Any:
    """Poll an observable condition until it holds (no blind sleeps). Pass the page when the
    condition depends on Playwright callbacks (routes): the sync API runs them only while waiting
    inside Playwright."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
