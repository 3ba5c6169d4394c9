"""The pictures in docs/console.md: each console page in real Chromium, under the gateway's own
Content-Security-Policy, as a ticket leaves it. Taken into tests/artifacts/screenshots on every
run; to regenerate the committed ones:

    GATEWAY_CONSOLE_SCREENSHOTS=docs/img .venv/bin/python -m pytest -q tests/browser/test_console_docs.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import ENDPOINT_SECRET, SCREENSHOTS, Gateway, wait_until
from tests.conftest import API_KEY, TEST_ENV
from tests.servers import ROOT
from tests.signing import STANDARD_SECRET, standard_body, standard_headers

pytestmark = pytest.mark.browser


def _target() -> Path:
    wanted = os.environ.get("GATEWAY_CONSOLE_SCREENSHOTS")
    target = (ROOT / wanted) if wanted else SCREENSHOTS
    target.mkdir(parents=True, exist_ok=True)
    return target


def _shoot(page: Any, name: str) -> Path:
    """A full-page PNG of the page as it is, after checking it holds no secret."""
    html = page.content()
    for secret in [API_KEY, ENDPOINT_SECRET, STANDARD_SECRET, *TEST_ENV.values()]:
        assert secret not in html, f"a secret on {name}"
    path = _target() / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    return path


def _send(gw: Gateway, external_id: str, state: str, secret: str = STANDARD_SECRET, ts: float | None = None, **fields: Any) -> int:
    body = standard_body(external_id, state, **fields)
    return requests.post(gw.url + "/webhooks/worker", data=body, headers=standard_headers(secret, body, ts=ts), timeout=10).status_code


def test_console_pages_for_the_docs(chromium: Any, gateway_server: Gateway) -> None:
    gw = gateway_server
    jobs = [gw.register(label=f"render invoice INV-{n} for ACME GmbH") for n in (1041, 1042, 1043)]
    failed = jobs[1]
    assert _send(gw, jobs[0]["external_id"], "complete") == 200
    assert _send(gw, failed["external_id"], "processing", progress={"current": 3, "total": 8}) == 200
    assert _send(gw, failed["external_id"], "failed", error={"code": "render_failed", "message": "GPU out of memory at page 4"}) == 200
    wrong = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    assert _send(gw, jobs[2]["external_id"], "processing", secret=wrong) == 401
    assert _send(gw, jobs[2]["external_id"], "processing", ts=time.time() - 3600) == 401

    context = chromium.new_context(viewport={"width": 1200, "height": 760})  # the real CSP applies
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(gw.url + "/console/signin")
        _shoot(page, "signin")
        page.get_by_label("API key").fill(API_KEY)
        page.get_by_role("button", name="Sign in").click()

        page.get_by_role("searchbox").fill("acme")
        page.keyboard.press("Enter")
        expect(page.get_by_role("table")).to_contain_text("INV-1043")
        _shoot(page, "search")

        page.get_by_role("link", name=failed["job"]["id"]).click()
        expect(page.get_by_role("region", name="What failed")).to_contain_text("GPU out of memory")
        expect(page.locator("job-status")).to_contain_text("fail", ignore_case=True)
        page.locator(".timeline summary", has_text="processing → failed").click()
        _shoot(page, "job")

        page.get_by_role("link", name="Deliveries").click()
        page.get_by_label("Outcome").select_option("rejected")
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_role("table")).to_contain_text("too old or in the future")
        _shoot(page, "deliveries")

        page.get_by_role("link", name="Sources").click()
        wait_until(lambda: page.reload() and page.get_by_role("button", name="Re-send").count() > 0, what="a dead message", page=page)
        _shoot(page, "sources")
        assert not errors, errors
    finally:
        context.close()
