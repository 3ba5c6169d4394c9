"""What each provider's documentation says, checked rule by rule: signatures against the
providers' own code and published examples, progress, steps, thin payloads."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from adapters.base import WebhookRequest
from adapters.fixtures import load
from adapters.github import GitHubAdapter, step_progress
from adapters.mux import MuxAdapter
from adapters.render import RenderAdapter
from adapters.replicate import ReplicateAdapter, parse_progress
from adapters.testing import RECEIVED_AT, check_event
from adapters.twilio import TwilioAdapter, signature
from gateway.errors import PayloadError, SignatureError
from gateway.states import State
from tests import signing
from tests.fake_render import FakeRender

# -- Replicate ---------------------------------------------------------------------------------


def test_tqdm_progress_is_the_last_bar() -> None:
    logs = "Loading model\n 10%|█         | 10/100 [00:01<00:09, 9.9it/s]\r 45%|████▌     | 45/100 [00:03<00:04, 12.1it/s]"
    assert parse_progress(logs) == {"current": 45, "total": 100, "step": "Loading model"}
    assert parse_progress("Sampling:  45%|████▌     | 45/100 [00:03<00:04, 12.1it/s]") == {"current": 45, "total": 100, "step": "Sampling"}
    assert parse_progress("no bar here\njust text") is None
    assert parse_progress("") is None


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 10**6)), min_size=1, max_size=8))
def test_tqdm_progress_reads_any_bar(bars: list[tuple[int, int]]) -> None:
    logs = "\r".join(f"{min(c, t) * 100 // t:3d}%|####      | {min(c, t)}/{t} [00:01<00:02, 3.3it/s]" for c, t in bars)
    c, t = bars[-1]
    assert parse_progress(logs) == {"current": min(c, t), "total": t, "step": None}


def _replicate_request(body: dict[str, Any], ts: int | None = None) -> WebhookRequest:
    raw = json.dumps(body)
    headers = signing.standard_headers(signing.REPLICATE_SECRET, raw, ts=ts)
    return WebhookRequest(raw.encode(), headers, received_at=RECEIVED_AT)


def test_replicate_later_snapshots_fold_later_and_before_the_end() -> None:
    adapter = ReplicateAdapter()
    fx = load("replicate")
    early = dict(fx["processing"]["body"], logs="Sampling:  10%|#         | 10/100 [00:01<00:09, 9.9it/s]")
    late = fx["processing"]["body"]
    done = fx["succeeded"]["body"]
    t_early, t_late, t_done = (adapter.parse(_replicate_request(b))[0].occurred_at for b in (early, late, done))
    assert t_early < t_late < t_done


def test_replicate_snapshot_never_dated_after_it_was_sent() -> None:
    body = dict(load("replicate")["processing"]["body"], logs="line\n" * 5000)
    started = ReplicateAdapter().parse(_replicate_request(body))[0].occurred_at  # sent "now": the offset stands
    sent_at_start = calendar.timegm((2026, 11, 28, 12, 0, 2, 0, 0, 0))
    pinned = ReplicateAdapter().parse(_replicate_request(body, ts=sent_at_start))[0].occurred_at
    assert pinned < started
    assert pinned.isoformat().startswith("2026-11-28T12:00:02")


def test_replicate_verifies_with_the_libraries_signature_only() -> None:
    req = _replicate_request(load("replicate")["starting"]["body"])
    ReplicateAdapter().verify(req, [signing.REPLICATE_SECRET])
    with pytest.raises(SignatureError):
        ReplicateAdapter().verify(req, [signing.RENDER_SECRET])


# -- GitHub ------------------------------------------------------------------------------------


def test_github_documented_example_signature() -> None:
    """docs.github.com "Validating webhook deliveries": the published test values."""
    req = WebhookRequest(b"Hello, World!", {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"})
    GitHubAdapter().verify(req, ["It's a Secret to Everybody"])
    with pytest.raises(SignatureError):
        GitHubAdapter().verify(req, ["It's a secret to everybody"])


def test_github_steps_progress() -> None:
    steps = load("github")["workflow_job_in_progress"]["body"]["workflow_job"]["steps"]
    assert step_progress(steps) == {"current": 3, "total": 7, "step": "Run tests"}
    done = [dict(s, status="completed") for s in steps]
    assert step_progress(done) == {"current": 7, "total": 7, "step": None}
    assert step_progress([]) is None and step_progress("x") is None


def test_github_failed_job_names_the_failed_step() -> None:
    body = load("github")["workflow_job_completed_timed_out"]["body"]
    raw = json.dumps(body).encode()
    events = GitHubAdapter().parse(WebhookRequest(raw, signing.github_headers(signing.GITHUB_SECRET, raw, "workflow_job")))
    assert events[0].error["code"] == "timed_out"
    assert "timed out" in events[0].error["message"] and "Run tests" in events[0].error["message"]


def test_github_rerun_is_newer_than_the_failure_it_follows() -> None:
    fx = load("github")
    adapter = GitHubAdapter()

    def parse(name: str) -> Any:
        raw = json.dumps(fx[name]["body"]).encode()
        return adapter.parse(WebhookRequest(raw, signing.github_headers(signing.GITHUB_SECRET, raw, "workflow_run")))[0]

    failed, rerun = parse("workflow_run_completed_failure"), parse("workflow_run_rerun_requested")
    assert failed.external_id == rerun.external_id
    assert rerun.occurred_at > failed.occurred_at and rerun.type == "workflow_run.requested#2"


# -- Twilio ------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200)
@given(params=st.lists(st.tuples(TEXT, TEXT), max_size=8), url=st.sampled_from(["https://gw.example.com/webhooks/twilio", "https://gw.example.com/hook?x=1&y=2", "http://10.0.0.1:8080/t"]))
def test_twilio_signature_equals_twilios_own(params: list[tuple[str, str]], url: str) -> None:
    """Our verification's signature is byte for byte RequestValidator.compute_signature's."""
    expected = RequestValidator(signing.TWILIO_TOKEN).compute_signature(url, MultiDict(params))
    assert signature(signing.TWILIO_TOKEN, url, params).decode() == expected


def _twilio_request(url_signed: str, url_seen: str, params: dict[str, str], extra: dict[str, str] | None = None, algorithm: str | None = None) -> WebhookRequest:
    sig = RequestValidator(signing.TWILIO_TOKEN).compute_signature(url_signed, params, algorithm)
    headers = {"X-Twilio-Signature": sig, **(extra or {})}
    return WebhookRequest(urlencode(params).encode(), headers, url=url_seen, received_at=RECEIVED_AT)


def test_twilio_accepts_signatures_with_and_without_the_port() -> None:
    params = load("twilio")["message_sent"]["body"]
    TwilioAdapter().verify(_twilio_request("https://gw.example.com:443/webhooks/twilio", "https://gw.example.com/webhooks/twilio", params), [signing.TWILIO_TOKEN])
    TwilioAdapter().verify(_twilio_request("https://gw.example.com/webhooks/twilio", "https://gw.example.com:443/webhooks/twilio", params), [signing.TWILIO_TOKEN])
    with pytest.raises(SignatureError):  # another host is another URL
        TwilioAdapter().verify(_twilio_request("https://evil.example.com/webhooks/twilio", "https://gw.example.com/webhooks/twilio", params), [signing.TWILIO_TOKEN])


def test_twilio_query_string_is_signed() -> None:
    params = load("twilio")["message_sent"]["body"]
    signed = "https://gw.example.com/webhooks/twilio?tenant=7"
    TwilioAdapter().verify(_twilio_request(signed, signed, params), [signing.TWILIO_TOKEN])
    with pytest.raises(SignatureError):
        TwilioAdapter().verify(_twilio_request(signed, "https://gw.example.com/webhooks/twilio?tenant=8", params), [signing.TWILIO_TOKEN])


def test_twilio_hmac_sha256_signature_settings() -> None:
    params = load("twilio")["message_sent"]["body"]
    url = signing.TWILIO_PUBLIC_URL
    settings_header = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}
    TwilioAdapter().verify(_twilio_request(url, url, params, settings_header, "HMAC_SHA256"), [signing.TWILIO_TOKEN])
    with pytest.raises(SignatureError):  # a SHA-1 signature presented as SHA-256
        TwilioAdapter().verify(_twilio_request(url, url, params, settings_header), [signing.TWILIO_TOKEN])
    with pytest.raises(SignatureError):
        TwilioAdapter().verify(_twilio_request(url, url, params, {"X-Twilio-Webhooks-Signature-Settings": "algorithm=MD5"}), [signing.TWILIO_TOKEN])


def test_twilio_json_body_with_body_sha256() -> None:
    body = b'{"MessageSid": "SM1", "MessageStatus": "sent"}'
    url = signing.TWILIO_PUBLIC_URL + "?bodySHA256=" + hashlib.sha256(body).hexdigest()
    sig = RequestValidator(signing.TWILIO_TOKEN).compute_signature(url, {})
    TwilioAdapter().verify(WebhookRequest(body, {"X-Twilio-Signature": sig}, url=url), [signing.TWILIO_TOKEN])
    with pytest.raises(SignatureError):
        TwilioAdapter().verify(WebhookRequest(body + b" ", {"X-Twilio-Signature": sig}, url=url), [signing.TWILIO_TOKEN])


def test_twilio_event_id_is_sid_and_status() -> None:
    fx = load("twilio")
    req = _twilio_request(signing.TWILIO_PUBLIC_URL, signing.TWILIO_PUBLIC_URL, fx["message_undelivered"]["body"])
    event = TwilioAdapter().parse(req)[0]
    assert event.event_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f:undelivered"
    assert event.external_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert event.occurred_at == RECEIVED_AT  # messages carry no time: the gateway's receipt time


def test_twilio_rejects_oversized_forms() -> None:
    params = {f"P{i}": "x" for i in range(500)}
    req = _twilio_request(signing.TWILIO_PUBLIC_URL, signing.TWILIO_PUBLIC_URL, params)
    with pytest.raises(SignatureError):
        TwilioAdapter().verify(req, [signing.TWILIO_TOKEN])
    with pytest.raises(PayloadError):
        TwilioAdapter().parse(req)


# -- Mux ---------------------------------------------------------------------------------------


def test_mux_signature_as_documented() -> None:
    body = json.dumps(load("mux")["asset_ready"]["body"]).encode()
    t = str(int(time.time()))
    digest = hmac.new(signing.MUX_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    MuxAdapter().verify(WebhookRequest(body, {"mux-signature": f"t={t},v1={digest}"}), [signing.MUX_SECRET])
    with pytest.raises(SignatureError):
        MuxAdapter().verify(WebhookRequest(body, {"mux-signature": f"t={int(t) + 1},v1={digest}"}), [signing.MUX_SECRET])


def test_mux_asset_from_a_url_is_followed_by_its_own_id() -> None:
    body = load("mux")["asset_ready"]["body"]
    del body["data"]["upload_id"]
    raw = json.dumps(body).encode()
    event = MuxAdapter().parse(WebhookRequest(raw, signing.mux_headers(signing.MUX_SECRET, raw)))[0]
    assert event.external_id == body["data"]["id"] and event.state is State.COMPLETE


# -- Render ------------------------------------------------------------------------------------


def _render_event(name: str, **options: Any) -> Any:
    raw = json.dumps(load("render")[name]["body"])
    req = WebhookRequest(raw.encode(), signing.standard_headers(signing.RENDER_SECRET, raw))
    return RenderAdapter(options).parse(req)[0]


def test_render_thin_event_asks_for_details() -> None:
    thin = _render_event("deploy_ended_thin", api_base="https://api.render.test/v1/")
    assert thin.needs_details and thin.state is None
    assert thin.event_id == "evj-d1l6heogjchc73d5f2h0" and thin.external_id == "srv-d0vqc3ruibrs73a4e9og"
    req = RenderAdapter({"api_base": "https://api.render.test/v1/"}).details_request(thin, "rnd_key")
    assert req is not None
    assert req.url == "https://api.render.test/v1/events/evj-d1l6heogjchc73d5f2h0"
    assert req.headers["Authorization"] == "Bearer rnd_key" and req.headers["Accept"] == "application/json"
    assert RenderAdapter().details_request(thin, None).url.startswith("https://api.render.com/v1/events/")  # type: ignore[union-attr]


def test_render_status_in_the_body_needs_no_fetch() -> None:
    event = _render_event("deploy_ended_succeeded")
    assert not event.needs_details and event.state is State.COMPLETE and event.external_id == "dep-d1l6hb8gjchc73d5f2b0"


@pytest.mark.parametrize("name, state, code", [("api_event_deploy_ended", State.COMPLETE, None), ("api_event_deploy_ended_failed", State.FAILED, "deploy_failed")])
def test_render_details_from_the_events_api(name: str, state: State, code: str | None) -> None:
    thin = _render_event("deploy_ended_thin")
    response = json.dumps(load("render")[name]["body"]).encode()
    events = RenderAdapter().parse_details(thin, 200, response)
    assert len(events) == 1
    event = events[0]
    check_event(event)
    assert event.event_id == "evj-d1l6heogjchc73d5f2h0:details"
    assert event.external_id == "dep-d1l6hb8gjchc73d5f2b0" and event.state is state and not event.needs_details
    assert (event.error or {}).get("code") == code
    assert RenderAdapter().parse_details(thin, 200, response) == events  # deterministic


@pytest.mark.parametrize("status", [401, 404, 500])
def test_render_details_error_answers_are_payload_errors(status: int) -> None:
    with pytest.raises(PayloadError):
        RenderAdapter().parse_details(_render_event("deploy_ended_thin"), status, b"{}")


@settings(max_examples=150)
@given(body=st.binary(max_size=200) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(["type", "timestamp", "details", "id"]), st.none() | st.integers() | st.text(max_size=10) | st.dictionaries(st.sampled_from(["deployId", "status", "jobId", "reason"]), st.none() | st.integers() | st.text(max_size=10) | st.booleans()))))
def test_render_details_fuzz_raises_only_payload_error(body: bytes) -> None:
    thin = _render_event("deploy_ended_thin")
    try:
        events = RenderAdapter().parse_details(thin, 200, body)
    except PayloadError:
        return
    for event in events:
        check_event(event)


def test_render_details_through_the_fake_api() -> None:
    """The round trip the outbox makes: details_request → HTTP GET on the fake API → parse_details."""
    api_doc = load("render")["api_event_deploy_ended"]["body"]
    with FakeRender(api_key="rnd_fake") as fake:
        fake.events[api_doc["id"]] = api_doc
        adapter = RenderAdapter({"api_base": fake.api_base})
        thin = _render_event("deploy_ended_thin")
        fake.fail_next(1, status=503)
        req = adapter.details_request(thin, "rnd_fake")
        assert req is not None
        first = requests.get(req.url, headers=dict(req.headers), timeout=5)
        assert first.status_code == 503  # a retry-worthy answer; the outbox tries again
        second = requests.get(req.url, headers=dict(req.headers), timeout=5)
        events = adapter.parse_details(thin, second.status_code, second.content)
        assert events[0].state is State.COMPLETE
        assert fake.requests == [(f"/v1/events/{api_doc['id']}", "Bearer rnd_fake")] * 2
        wrong_key = adapter.details_request(thin, "nope")
        assert requests.get(wrong_key.url, headers=dict(wrong_key.headers), timeout=5).status_code == 401  # type: ignore[union-attr]
