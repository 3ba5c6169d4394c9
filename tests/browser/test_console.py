"""The support console in real Chromium, as a person on support uses it on a ticket: sign in,
paste an external id, land on the job, read why it failed, press Retry, see the next attempt."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.axe import assert_accessible
from tests.browser.conftest import ENDPOINT_SECRET, Gateway, wait_until
from tests.conftest import API_KEY
from tests.signing import standard_body, standard_headers

pytestmark = pytest.mark.browser


def test_ticket_to_retry(context, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register(label="console ticket")
    job_id, external_id = reg["job"]["id"], reg["external_id"]
    gw.webhook(external_id, "failed", error={"code": "render_failed", "message": "GPU out of memory"})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(gw.url + "/console/")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("did not sign you in")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("searchbox").fill(external_id)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_be_visible()
    expect(page.get_by_role("region", name="What failed")).to_contain_text("GPU out of memory")
    page.wait_for_function("customElements.get('job-status') !== undefined")
    expect(page.locator("job-status")).to_have_attribute("job-id", job_id)
    assert API_KEY not in page.content()

    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".facts")).to_contain_text("queued")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert gw.job(job_id)["attempt"] == 2
    page.locator(".timeline summary", has_text="retry requested by console:key:").first.click()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def sign_in(page: Any, gw: Gateway) -> None:
    """Sign in through the form, as a person does."""
    page.goto(gw.url + "/console/signin")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("searchbox")).to_be_visible()


def test_every_console_page_passes_axe(context, gateway_server: Gateway) -> None:
    """axe-core (WCAG A/AA and best practices) on each page as support sees it: no serious or critical violation."""
    gw = gateway_server
    failed = gw.register(label="a11y render 7")
    gw.register(label="a11y render 8")
    gw.webhook(failed["external_id"], "failed", error={"code": "render_failed", "message": "GPU out of memory"})
    body = standard_body(failed["external_id"], "processing")
    wrong = standard_headers("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", body)
    assert requests.post(gw.url + "/webhooks/worker", data=body, headers=wrong, timeout=10).status_code == 401
    page = context.new_page()

    page.goto(gw.url + "/console/signin")
    assert_accessible(page, "sign-in")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert_accessible(page, "sign-in after a wrong key")

    sign_in(page, gw)
    assert_accessible(page, "search (empty)")
    page.get_by_role("searchbox").fill("a11y render")
    page.keyboard.press("Enter")
    expect(page.get_by_role("table")).to_contain_text("a11y render 8")
    assert_accessible(page, "search results")

    page.goto(gw.url + f"/console/jobs/{failed['job']['id']}")
    expect(page.get_by_role("region", name="What failed")).to_be_visible()
    page.locator(".timeline summary").first.click()
    assert_accessible(page, "job page")

    page.goto(gw.url + "/console/deliveries?outcome=rejected&source=worker")
    page.get_by_role("link", name="last hour").click()
    expect(page.get_by_label("Since (UTC)")).not_to_have_value("")
    expect(page.get_by_role("table")).to_contain_text("matched none")
    assert_accessible(page, "deliveries")

    page.goto(gw.url + "/console/sources")
    expect(page.get_by_role("img", name=re.compile(r"^worker: .*\d+ rejected"))).to_be_visible()
    # the failed job's message to `billing` dies at its first refused try, in the server's sender loop
    wait_until(lambda: page.reload() and page.get_by_role("button", name="Re-send").count() > 0, what="a dead message", page=page)
    assert ENDPOINT_SECRET not in page.content() and API_KEY not in page.content()
    assert_accessible(page, "sources")


def _tab_to(page: Any, name: str, limit: int = 60) -> None:
    """Press Tab until the focused element's accessible text is ``name``, as a keyboard user does."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.textContent.trim()") == name:
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"{name} has focus but no visible outline"
            return
    raise AssertionError(f"{name!r} not reachable with Tab in {limit} presses")


def test_keyboard_only(context, gateway_server: Gateway) -> None:
    """Sign in, search, open the job and press Retry without a mouse."""
    gw = gateway_server
    reg = gw.register(label="keyboard ticket")
    gw.webhook(reg["external_id"], "failed", error={"code": "render_failed", "message": "disk full"})
    page = context.new_page()
    page.goto(gw.url + "/console/signin")
    _tab_to(page, "Skip to content")
    page.keyboard.press("Tab")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("searchbox")).to_be_focused()  # autofocus: paste straight away
    page.keyboard.type("keyboard ticket")
    page.keyboard.press("Enter")
    expect(page.get_by_role("table")).to_contain_text(reg["job"]["id"])
    _tab_to(page, reg["job"]["id"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("region", name="What failed")).to_contain_text("disk full")
    _tab_to(page, "Retry")
    page.keyboard.press("Enter")
    expect(page.locator(".facts")).to_contain_text("queued")
    assert gw.job(reg["job"]["id"])["attempt"] == 2
