"""<job-status> and watchJob in real headless Chromium, against a real gunicorn gateway whose
jobs move by real Standard-Webhooks-signed deliveries."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import SUPPORT_EMAIL, Gateway, new_job_id, open_harness, screenshot, wait_until, watch
from tests.conftest import API_KEY, ARTIFACTS

pytestmark = pytest.mark.browser

def text_of(status):  # the one line a person reads
    return status.locator("[part=message]")


def test_six_states_from_signed_webhooks(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    status = open_harness(page, gw)

    expect(status).to_have_attribute("state", "empty")
    expect(text_of(status)).to_have_text("Starting job…")
    screenshot(status, "1-empty")

    job_id = new_job_id()
    token = gw.token(job_id)  # the page may watch before the backend registered the job
    watch(page, job_id, token)
    expect(status).to_have_attribute("state", "loading")
    expect(text_of(status)).to_have_text("Checking status…")
    screenshot(status, "2-loading")

    queue = "imports-" + job_id[-6:]
    reg = gw.register(job_id, queue=queue, label="Import customers.csv")
    expect(status).to_have_attribute("state", "queued")
    gw.webhook(reg["external_id"], "queued", queue={"name": queue, "position": 4, "total": 12})
    expect(text_of(status)).to_have_text("Queued — position 4 of 12")
    expect(status.locator("[part=label]")).to_have_text("Import customers.csv")
    screenshot(status, "3-queued")

    gw.webhook(reg["external_id"], "processing", progress={"current": 1240, "total": 4000, "step": "importing rows"})
    expect(text_of(status)).to_have_text("Processing row 1,240 of 4,000 — importing rows")
    bar = status.get_by_role("progressbar")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("aria-valuenow", "1240")
    expect(bar).to_have_attribute("aria-valuemin", "0")
    expect(bar).to_have_attribute("aria-valuemax", "4000")
    screenshot(status, "4-processing")

    gw.webhook(reg["external_id"], "processing", progress={"step": "validating columns"})
    expect(text_of(status)).to_have_text("Processing — validating columns")
    expect(status.get_by_role("progressbar")).to_have_count(0)  # no totals, no bar pretending

    gw.webhook(reg["external_id"], "failed", error={"code": "bad_row", "message": "Row 1,241: missing email", "retryable": True})
    expect(text_of(status)).to_have_text("Failed — Row 1,241: missing email")
    expect(status.get_by_role("button", name="Retry")).to_be_visible()
    support = status.get_by_role("link", name="Contact support")
    expect(support).to_be_visible()
    href = support.get_attribute("href")
    assert href.startswith(f"mailto:{SUPPORT_EMAIL}?")
    assert job_id in parse_qs(urlparse(href).query)["subject"][0]
    screenshot(status, "6-failed")

    status.get_by_role("button", name="Retry").click()  # polling waits at `failed` until the page retries
    expect(status).to_have_attribute("state", "queued")
    result = "https://files.example.com/imports/customers-report.csv"
    gw.webhook(reg["external_id"], "complete", result={"url": result})
    expect(text_of(status)).to_have_text("Complete")
    expect(status.get_by_role("link", name="View result")).to_have_attribute("href", result)
    expect(status.get_by_role("button", name="Retry")).to_have_count(0)
    screenshot(status, "5-complete")
    assert gw.job(job_id)["attempt"] == 2

    live = status.locator("[aria-live]")
    expect(live).to_have_attribute("aria-live", "polite")
    expect(live).to_contain_text("Complete")


def test_retry_button_moves_a_failed_job_back_to_queued(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    job_id = reg["job"]["id"]
    status = open_harness(page, gw, job_id, reg["token"])
    expect(status).to_have_attribute("state", "queued")
    gw.webhook(reg["external_id"], "failed", error={"code": "build_failed", "message": "Build failed (exit 1)", "retryable": True})
    expect(text_of(status)).to_have_text("Failed — Build failed (exit 1)")

    status.get_by_role("button", name="Retry").click()
    expect(status).to_have_attribute("state", "queued")
    expect(text_of(status)).to_have_text(re.compile(r"^Queued — position \d+ of \d+$"))
    job = gw.job(job_id)
    assert (job["state"], job["attempt"]) == ("queued", 2)

    # the next attempt moves on from there like any other
    gw.webhook(reg["external_id"], "processing", progress={"current": 10, "total": 20, "step": "building"})
    expect(text_of(status)).to_have_text("Processing row 10 of 20 — building")


def test_a_failure_that_cannot_be_retried_offers_support_only(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    status = open_harness(page, gw, reg["job"]["id"], reg["token"])
    gw.webhook(reg["external_id"], "failed", error={"code": "card_declined", "message": "The card was declined", "retryable": False})
    expect(text_of(status)).to_have_text("Failed — The card was declined")
    expect(status.get_by_role("link", name="Contact support")).to_be_visible()
    expect(status.get_by_role("button", name="Retry")).to_have_count(0)


def test_an_unknown_job_shows_checking_status_then_its_real_state(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    job_id = new_job_id()
    token = gw.token(job_id)
    not_found: list[str] = []
    page.on("response", lambda r: not_found.append(r.url) if r.status == 404 and job_id in r.url else None)
    status = open_harness(page, gw, job_id, token)
    expect(text_of(status)).to_have_text("Checking status…")
    # the gateway has answered (404 over HTTP, or `pending` over WebSocket) and it still says so
    wait_until(lambda: not_found or page.evaluate("document.querySelector('#status').transport") in ("websocket", "sse"), what="a first answer")
    expect(status).to_have_attribute("state", "loading")

    gw.register(job_id)
    expect(text_of(status)).to_have_text("Queued — position 1 of 1")


def test_two_tabs_watching_one_job_both_update(context, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    job_id = reg["job"]["id"]
    tabs = [context.new_page(), context.new_page()]
    statuses = [open_harness(tab, gw, job_id, reg["token"]) for tab in tabs]
    for s in statuses:
        expect(s).to_have_attribute("state", "queued")

    gw.webhook(reg["external_id"], "processing", progress={"current": 3, "total": 8, "step": "encoding"})
    for s in statuses:
        expect(text_of(s)).to_have_text("Processing row 3 of 8 — encoding")
        expect(s).to_have_attribute("transport", "websocket")  # pushed, not polled
    gw.webhook(reg["external_id"], "complete", result={"url": "https://example.com/out.mp4"})
    for s in statuses:
        expect(text_of(s)).to_have_text("Complete")


def test_a_new_job_id_never_shows_the_previous_jobs_state(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    done = gw.register()
    gw.webhook(done["external_id"], "complete", result={"url": "https://example.com/a"})
    status = open_harness(page, gw, done["job"]["id"], done["token"])
    expect(text_of(status)).to_have_text("Complete")

    job_id = new_job_id()
    page.evaluate("() => { window.__states = []; document.querySelector('#status').addEventListener('job-change', e => window.__states.push(e.detail.state)); }")
    watch(page, job_id, gw.token(job_id))
    expect(text_of(status)).to_have_text("Checking status…")
    expect(status.get_by_role("link", name="View result")).to_have_count(0)
    assert page.evaluate("window.__states")[0] == "loading"


def test_falls_back_to_sse_when_websocket_is_blocked(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    page.route_web_socket(re.compile(r".*/ws$"), lambda ws: ws.close())
    reg = gw.register()
    job_id = reg["job"]["id"]
    status = open_harness(page, gw, job_id, reg["token"])
    expect(status).to_have_attribute("transport", "sse")
    expect(status).to_have_attribute("state", "queued")
    gw.webhook(reg["external_id"], "processing", progress={"current": 5, "total": 9, "step": "copying"})
    expect(text_of(status)).to_have_text("Processing row 5 of 9 — copying")
    gw.webhook(reg["external_id"], "complete")
    expect(text_of(status)).to_have_text("Complete")
    assert gw.requests_since(0, f"/api/jobs/{job_id}/stream"), "the stream was never requested"
    assert gw.requests_since(0, f"/api/jobs/{job_id}") == [], "it polled although SSE worked"


def test_polls_on_the_backoff_schedule_when_websocket_and_sse_are_blocked(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    page.route_web_socket(re.compile(r".*/ws$"), lambda ws: ws.close())
    page.route(re.compile(r".*/api/jobs/[^/]+/stream.*"), lambda route: route.abort())
    reg = gw.register()
    job_id = reg["job"]["id"]
    path = f"/api/jobs/{job_id}"
    mark = time.time() - 1
    status = open_harness(page, gw, job_id, reg["token"])
    expect(status).to_have_attribute("transport", "poll")
    expect(status).to_have_attribute("state", "queued")

    # queued, nothing changes: 1 s, 2 s, 4 s, 8 s, then the 10 s ceiling
    times = polls(gw, mark, path, at_least=6, timeout=40)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert_schedule(gaps[:5], [1, 2, 4, 8, 10])

    # a state change resets the delay to 1 s
    gw.webhook(reg["external_id"], "processing", progress={"current": 1, "total": 2, "step": "working"})
    expect(status).to_have_attribute("state", "processing")
    seen = len(gw.requests_since(mark, path))
    after = polls(gw, mark, path, at_least=seen + 2, timeout=10)
    reset = [b - a for a, b in zip(after[seen - 1:], after[seen:])][:2]
    (ARTIFACTS / "poll-schedule.json").write_text(json.dumps({"unchanged": [round(g, 3) for g in gaps[:5]], "after_change": [round(g, 3) for g in reset]}))
    assert_schedule(reset, [1, 2])

    # complete is terminal: no poll follows (the next would have come 1 s after the change)
    gw.webhook(reg["external_id"], "complete")
    expect(status).to_have_attribute("state", "complete")
    expect(status).to_have_attribute("transport", "none")
    count = len(gw.requests_since(mark, path))
    time.sleep(3)  # an observation window, not synchronisation: nothing may arrive in it
    assert len(gw.requests_since(mark, path)) == count


def polls(gw: Gateway, mark: float, path: str, at_least: int, timeout: float) -> list[float]:
    """The poll arrival times once there are at least ``at_least`` of them."""
    return wait_until(lambda: (lambda t: t if len(t) >= at_least else None)(gw.requests_since(mark, path)), timeout, f"{at_least} polls")


def assert_schedule(gaps: list[float], expected: list[float]) -> None:
    """Each gap is its scheduled delay plus one request's latency: never early, at most 0.9 s late."""
    assert len(gaps) == len(expected), gaps
    for gap, want in zip(gaps, expected):
        assert want - 0.05 <= gap <= want + 0.9, f"gaps {[round(g, 2) for g in gaps]} do not follow {expected}"


def test_a_dropped_websocket_reconnects_with_jitter_and_resumes_from_its_last_version(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    routes: list = []  # each page WebSocket, connected through to the real gateway, so the test can cut it
    page.route_web_socket(re.compile(r".*/ws$"), lambda ws: (routes.append(ws), ws.connect_to_server()))
    reg = gw.register()
    job_id, token = reg["job"]["id"], reg["token"]
    status = open_harness(page, gw)
    # watch what the page sends, without changing it (on the WebSocket class the page really uses)
    page.evaluate("() => { const send = WebSocket.prototype.send; window.__sent = [];"
                  " WebSocket.prototype.send = function (d) { window.__sent.push(JSON.parse(d)); return send.call(this, d); }; }")
    subscribes = lambda: page.evaluate("window.__sent")  # noqa: E731
    watch(page, job_id, token)
    expect(status).to_have_attribute("transport", "websocket")
    gw.webhook(reg["external_id"], "processing", progress={"current": 1, "total": 4, "step": "first"})
    expect(text_of(status)).to_have_text("Processing row 1 of 4 — first")
    shown = gw.job(job_id)["version"]
    assert subscribes() == [{"type": "subscribe", "job": job_id, "token": token, "since": 0}]

    dropped = time.time()
    routes[0].close(code=1001, reason="the test cuts the connection")
    gw.webhook(reg["external_id"], "processing", progress={"current": 3, "total": 4, "step": "second"})
    expect(text_of(status)).to_have_text("Processing row 3 of 4 — second")
    assert len(routes) == 2 and subscribes()[1] == {"type": "subscribe", "job": job_id, "token": token, "since": shown}
    # the first reconnect waits 0.5-1 s (half fixed, half random): never at once, never long
    (reconnected,) = gw.requests_since(dropped, "/ws")
    (ARTIFACTS / "ws-reconnect.json").write_text(json.dumps({"reconnect_after_s": round(reconnected - dropped, 3)}))
    assert 0.45 <= reconnected - dropped <= 2.5
    expect(status).to_have_attribute("transport", "websocket")


def test_a_stale_answer_never_moves_the_display_back(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    job_id = reg["job"]["id"]
    stale = requests.get(gw.url + f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert stale.json()["state"] == "queued"
    gw.webhook(reg["external_id"], "processing", progress={"current": 1, "total": 2, "step": "one"})

    status = open_harness(page, gw, job_id, reg["token"], transports="poll")
    expect(text_of(status)).to_have_text("Processing row 1 of 2 — one")
    page.evaluate("() => { window.__states = []; document.querySelector('#status').addEventListener('job-change', e => window.__states.push(e.detail.state)); }")

    served: list[float] = []

    def serve_stale(route) -> None:  # a cache answering with an older version, once
        served.append(time.time())
        page.unroute(f"{gw.url}/api/jobs/{job_id}")
        route.fulfill(status=200, content_type="application/json", body=stale.text, headers={"ETag": stale.headers["ETag"]})

    page.route(f"{gw.url}/api/jobs/{job_id}", serve_stale)
    wait_until(lambda: served, timeout=15, what="the stale answer", page=page)
    # the poll after it reached the gateway, so the stale answer has been handled by then
    polls(gw, served[0], f"/api/jobs/{job_id}", at_least=1, timeout=15)
    expect(text_of(status)).to_have_text("Processing row 1 of 2 — one")
    assert page.evaluate("window.__states") == []


def test_watchjob_close_ends_everything_it_started(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    job_id = reg["job"]["id"]
    open_harness(page, gw)
    page.evaluate("""async ([id, token]) => {
        const {watchJob} = await import('/static/jobstatus.js');
        window.__changes = [];
        window.__watcher = watchJob(id, {token, transports: ['poll'], onChange: (job) => window.__changes.push(job && job.state)});
    }""", [job_id, reg["token"]])
    page.wait_for_function("window.__changes.length === 1")
    assert page.evaluate("window.__changes") == ["queued"]
    page.evaluate("window.__watcher.close()")
    closed = time.time()
    assert page.evaluate("window.__watcher.transport") == "none"

    gw.webhook(reg["external_id"], "processing", progress={"step": "ignored by a closed watcher"})
    time.sleep(2.5)  # an observation window: the next poll was due 1 s after the first answer
    assert gw.requests_since(closed, f"/api/jobs/{job_id}") == []
    assert page.evaluate("window.__changes") == ["queued"]


def test_styling_is_overridable_with_custom_properties_and_parts(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    status = open_harness(page, gw, reg["job"]["id"], reg["token"])
    page.add_style_tag(content="job-status { --job-status-accent: rgb(1, 2, 3); } job-status::part(label) { color: rgb(4, 5, 6); }")
    gw.webhook(reg["external_id"], "processing", progress={"current": 1, "total": 2, "step": "styled"}, label="Styled job")
    expect(text_of(status)).to_have_text("Processing row 1 of 2 — styled")
    bar = status.locator("[part=bar]")
    assert bar.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(1, 2, 3)"
    assert status.locator("[part=label]").evaluate("el => getComputedStyle(el).color") == "rgb(4, 5, 6)"


def test_a_refused_token_says_so_instead_of_checking_forever(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    other = gw.register()
    reg = gw.register()
    status = open_harness(page, gw, reg["job"]["id"], other["token"])  # a token for another job
    expect(text_of(status)).to_have_text("Status unavailable")
    expect(status.get_by_role("alert")).to_have_text("Live updates stopped: this page's status link is not valid for this job.")
    expect(status).to_have_attribute("transport", "none")
