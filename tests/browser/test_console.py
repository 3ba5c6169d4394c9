"""The support console in real Chromium, as a person on support uses it on a ticket: sign in,
paste an external id, land on the job, read why it failed, press Retry, see the next attempt."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Gateway
from tests.conftest import API_KEY

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
