"""The demo at `/` in real Chromium: a person starts simulated jobs and watches every state,
while the simulator drives them with signed webhooks to the gateway's own endpoint."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, Gateway

pytestmark = pytest.mark.browser

RECORD = """
window.__seen = [];
document.addEventListener('job-change', (e) => {
  const el = e.composedPath()[0];
  window.__seen.push({state: e.detail.state, text: el.shadowRoot.querySelector('[part=message]').textContent});
});
"""


def test_demo_shows_every_state_and_a_retry_completes(context, gateway_server: Gateway) -> None:
    gw = gateway_server
    page = context.new_page()
    page.set_viewport_size({"width": 1100, "height": 900})
    page.add_init_script(RECORD)
    mark = time.time() - 1
    page.goto(gw.url + "/?tick=0.25&start=0")  # no batch of its own: this test counts its six
    expect(page.get_by_role("heading", name="Job status, live")).to_be_visible()
    page.get_by_role("button", name="Start 6 jobs").click()

    cards = page.locator("#jobs job-status")
    expect(cards).to_have_count(6)
    page.wait_for_function(
        "['empty', 'loading', 'queued', 'processing', 'complete', 'failed'].every(s => window.__seen.some(x => x.state === s))",
        timeout=60_000,
    )
    texts = {x["state"]: [] for x in page.evaluate("window.__seen")}
    for x in page.evaluate("window.__seen"):
        texts[x["state"]].append(x["text"])
    assert "Starting job…" in texts["empty"] and "Checking status…" in texts["loading"]
    assert any(re.fullmatch(r"Queued — position [1-6] of [1-6]", t) for t in texts["queued"]), texts["queued"]
    assert any(re.fullmatch(r"Processing row [\d,]+ of [\d,]+ — importing rows", t) for t in texts["processing"]), texts["processing"]
    assert any(re.fullmatch(r"Failed — Row [\d,]+: missing email", t) for t in texts["failed"]), texts["failed"]

    # every change came in as a signed webhook to the gateway's own endpoint
    assert len(gw.requests_since(mark, "/webhooks/demo", method="POST")) >= 6 * 3

    failed = page.locator("#jobs job-status[state=failed]").first
    expect(failed).to_be_visible(timeout=60_000)
    job_id = failed.get_attribute("job-id")
    page.locator("#jobs").screenshot(path=str(_shot("demo")))
    failed.get_by_role("button", name="Retry").click()
    retried = page.locator(f'#jobs job-status[job-id="{job_id}"]')
    expect(retried).to_have_attribute("state", "queued")
    expect(retried).to_have_attribute("state", "complete", timeout=60_000)
    link = retried.get_by_role("link", name="View result")
    assert link.get_attribute("href") == f"{gw.url}/demo/results/{job_id}"
    assert gw.job(job_id)["attempt"] == 2
    link.click()
    expect(page.get_by_role("heading")).to_contain_text("done")


HEIGHTS = """
window.__heights = [];
document.addEventListener('job-change', (e) => {
  const el = e.composedPath()[0];
  requestAnimationFrame(() => window.__heights.push({
    job: el.getAttribute('job-id'), state: e.detail.state, height: el.closest('li').getBoundingClientRect().height}));
});
"""


def test_the_page_opens_with_jobs_already_moving_and_cards_keep_their_height(context, gateway_server: Gateway) -> None:
    gw = gateway_server
    page = context.new_page()
    page.set_viewport_size({"width": 1100, "height": 900})
    page.add_init_script(HEIGHTS)
    page.goto(gw.url + "/?tick=0.25")  # no click: the page starts its own small batch
    cards = page.locator("#jobs job-status")
    expect(cards).to_have_count(3)
    expect(page.locator("#empty-list")).to_be_hidden()
    page.wait_for_function(
        "['queued', 'processing', 'complete', 'failed'].every(s => window.__heights.some(x => x.state === s))", timeout=60_000)
    expect(page.locator("#jobs job-status[state=failed]").first).to_be_visible(timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#jobs job-status[state=processing], #jobs job-status[state=queued]').length === 0",
                           timeout=60_000)
    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    seen = page.evaluate("window.__heights")
    heights = {round(x["height"], 1) for x in seen} | {round(h, 1) for h in page.eval_on_selector_all("#jobs li", "els => els.map(e => e.getBoundingClientRect().height)")}
    states = {x["state"] for x in seen}
    assert {"queued", "processing", "complete", "failed"} <= states
    assert len(heights) == 1, sorted({(x["state"], round(x["height"], 1)) for x in seen})  # one height for every card in every state, Retry button included
    page.locator("#jobs").screenshot(path=str(_shot("demo-autostart")))


def _shot(name: str):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
