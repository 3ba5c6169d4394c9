"""The browser client's newer options in real Chromium against the real gateway: replaceable
messages with numbers in the page's language, a first paint from the snapshot the page already
has, and tokens that expire — renewed after the gateway's `token_expired` with nothing missed,
or, without getToken, an honest "expired" instead of "Checking status…"."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import Gateway, open_harness
from tests.conftest import API_KEY

pytestmark = pytest.mark.browser


def mint(gw: Gateway, job_id: str, ttl: int) -> dict[str, Any]:
    r = requests.post(gw.url + "/api/tokens", json={"job": job_id, "scopes": ["read", "retry"], "ttl": ttl},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 201, r.text
    return {"token": r.json()["token"], "expires_at": r.json()["expires_at"]}


def test_messages_can_be_replaced_and_numbers_follow_the_pages_language(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    status = open_harness(page, gw)
    page.eval_on_selector("#status", """el => {
        el.setAttribute('lang', 'de-DE');
        el.messages = {
            queuedPositionOf: 'In der Warteschlange — Platz {position} von {total}',
            processingOfStep: ({current, total, step}) => `Verarbeite ${current} von ${total} — ${step}`,
            failed: 'Fehlgeschlagen — {message}', retry: 'Erneut versuchen', contactSupport: 'Support kontaktieren',
        };
    }""")
    page.eval_on_selector("#status", "(el, [id, tok]) => { el.setAttribute('token', tok); el.setAttribute('job-id', id); }", [reg["job"]["id"], reg["token"]])
    message = status.locator("[part=message]")
    gw.webhook(reg["external_id"], "queued", queue={"name": "q", "position": 1234, "total": 56789})
    expect(message).to_have_text("In der Warteschlange — Platz 1.234 von 56.789")
    gw.webhook(reg["external_id"], "processing", progress={"current": 1240, "total": 4000, "step": "Zeilen importieren"})
    expect(message).to_have_text("Verarbeite 1.240 von 4.000 — Zeilen importieren")
    expect(status.get_by_role("progressbar")).to_have_attribute("aria-valuetext", "1.240 of 4.000")  # a key left in English
    gw.webhook(reg["external_id"], "failed", error={"code": "x", "message": "Zeile fehlt"})
    expect(message).to_have_text("Fehlgeschlagen — Zeile fehlt")
    expect(status.get_by_role("button", name="Erneut versuchen")).to_be_visible()
    expect(status.get_by_role("link", name="Support kontaktieren")).to_be_visible()


def test_an_inline_snapshot_is_the_first_paint_and_only_newer_versions_follow(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    gw.webhook(reg["external_id"], "processing", progress={"current": 7, "total": 9, "step": "importing rows"})
    snapshot = gw.job(reg["job"]["id"])
    open_harness(page, gw)
    # As a server-rendered page would: the element arrives with its job id, token and snapshot.
    page.evaluate("""([id, token, snapshot]) => {
        window.__states = [];
        const el = document.createElement('job-status');
        el.id = 'first-paint';
        el.addEventListener('job-change', (e) => window.__states.push([e.detail.state, e.detail.job && e.detail.job.version]));
        el.setAttribute('job-id', id);
        el.setAttribute('token', token);
        const script = document.createElement('script');
        script.type = 'application/json';
        script.textContent = JSON.stringify(snapshot);
        el.append(script);
        document.body.append(el);
    }""", [snapshot["id"], reg["token"], snapshot])
    status = page.locator("#first-paint")
    expect(status.locator("[part=message]")).to_have_text("Processing row 7 of 9 — importing rows")
    expect(status).to_have_attribute("transport", "websocket")
    assert page.evaluate("window.__states")[0] == ["processing", snapshot["version"]]  # never "Checking status…"
    gw.webhook(reg["external_id"], "complete")
    expect(status).to_have_attribute("state", "complete")
    states = page.evaluate("window.__states")
    assert [s for s, _ in states] == ["processing", "complete"], states


def test_after_token_expired_get_token_resumes_from_the_last_version(page, gateway_server: Gateway) -> None:
    """The renewal that comes late (the page could not know the expiry): the gateway ends the
    subscription with token_expired, the client asks getToken and resubscribes with `since`."""
    gw = gateway_server
    reg = gw.register()
    job_id, ttl = reg["job"]["id"], 2
    first = mint(gw, job_id, ttl)
    # A backend that misstates the expiry, so that every renewal comes after the gateway's token_expired.
    late = lambda: {"token": mint(gw, job_id, ttl)["token"], "expires_at": 4102444800}  # noqa: E731
    page.route(gw.url + "/__token__", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(late())))
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda p: frames.append(p if isinstance(p, str) else p.decode())))
    open_harness(page, gw)
    page.evaluate("""async ([id, token]) => {
        const {watchJob} = await import('/static/jobstatus.js');
        window.__versions = []; window.__errors = []; window.__calls = 0;
        window.__watcher = watchJob(id, {
            token, tokenExpiresAt: 4102444800,   // "unknown": no renewal before the gateway says so
            getToken: async () => { window.__calls += 1; return (await fetch('/__token__')).json(); },
            onChange: (job) => job && window.__versions.push(job.version),
            onError: (e) => window.__errors.push(e.code),
        });
    }""", [job_id, first["token"]])
    page.wait_for_function("window.__versions.length === 1")
    step, give_up = 0, time.time() + 3 * ttl + 30
    while sum("token_expired" in f for f in frames) < 2:  # two expiries, each renewed after the fact
        step += 1
        gw.webhook(reg["external_id"], "processing", progress={"current": step, "total": 100})
        page.wait_for_function("v => window.__versions.at(-1) === v", arg=gw.job(job_id)["version"])
        assert time.time() < give_up, f"no second token_expired; calls: {page.evaluate('window.__calls')}"
        page.wait_for_timeout(200)  # pacing: changes keep coming across each expiry
    gw.webhook(reg["external_id"], "complete")
    page.wait_for_function("v => window.__versions.at(-1) === v", arg=gw.job(job_id)["version"])
    versions = page.evaluate("window.__versions")
    assert versions == list(range(versions[0], versions[-1] + 1)), versions
    assert page.evaluate("window.__errors") == [] and page.evaluate("window.__calls") == 2  # once per token_expired


def test_without_get_token_an_expired_link_says_so(page, gateway_server: Gateway) -> None:
    gw = gateway_server
    reg = gw.register()
    short = mint(gw, reg["job"]["id"], 2)
    status = open_harness(page, gw, reg["job"]["id"], short["token"])
    expect(status).to_have_attribute("state", "queued")
    expect(status.get_by_role("alert")).to_have_text(
        "Live updates stopped: this status link has expired. Reload the page to get a new one.", timeout=15_000)
    expect(status).to_have_attribute("transport", "none")
    assert time.time() >= short["expires_at"]
