"""Whatever a provider (or anyone) sends to a built-in adapter's source — correctly signed or
not — the answer is one of the contract's statuses, never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.fixtures import load
from adapters.testing import JSON_VALUES, key_paths, mutate
from tests import signing

CONTRACT_STATUSES = {200, 400, 401, 413}


def _signed(source: str, raw: bytes) -> dict[str, str]:
    text = raw.decode("utf-8", "replace")
    if source in ("replicate", "render", "worker"):
        secret = {"replicate": signing.REPLICATE_SECRET, "render": signing.RENDER_SECRET, "worker": signing.STANDARD_SECRET}[source]
        return signing.standard_headers(secret, text)
    if source == "github":
        return signing.github_headers(signing.GITHUB_SECRET, raw, "workflow_job")
    if source == "mux":
        return signing.mux_headers(signing.MUX_SECRET, raw)
    if source == "stripe":
        return signing.stripe_headers(signing.STRIPE_SECRET, text)
    raise AssertionError(source)


PROVIDER = {"replicate": "replicate", "render": "render", "worker": "standard", "github": "github", "mux": "mux", "stripe": "stripe"}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("source", sorted(PROVIDER))
def test_signed_mutated_samples_never_500(client: Any, source: str, data: st.DataObject) -> None:
    fixtures = load(PROVIDER[source])
    doc = data.draw(st.sampled_from(sorted(fixtures)).map(lambda name: fixtures[name]["body"]))
    paths = key_paths(doc)
    if paths:
        doc = mutate(doc, data.draw(st.sampled_from(paths)), data.draw(JSON_VALUES), data.draw(st.booleans()))
    raw = json.dumps(doc).encode()
    r = client.post(f"/webhooks/{source}", data=raw, headers=_signed(source, raw))
    assert r.status_code in CONTRACT_STATUSES, r.get_data(as_text=True)
    assert r.is_json


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["MessageSid", "MessageStatus", "CallSid", "CallStatus", "ErrorCode", "Timestamp", "CallDuration", "X"]),
                              st.text(max_size=30), max_size=6))
def test_signed_twilio_forms_never_500(client: Any, params: dict[str, str]) -> None:
    raw = urlencode(params).encode()
    r = client.post("/webhooks/twilio", data=raw, headers=signing.twilio_headers(signing.TWILIO_TOKEN, signing.TWILIO_PUBLIC_URL, params))
    assert r.status_code in CONTRACT_STATUSES, r.get_data(as_text=True)


@FUZZ
@given(source=st.sampled_from(sorted(PROVIDER) + ["twilio", "twilio-direct"]), body=st.binary(max_size=200),
       headers=st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "Stripe-Signature", "X-Hub-Signature-256",
                                                "X-GitHub-Event", "X-GitHub-Delivery", "Mux-Signature", "X-Twilio-Signature",
                                                "X-Twilio-Webhooks-Signature-Settings", "Content-Type"]),
                               st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80), max_size=6))
def test_unsigned_noise_is_401_never_500(client: Any, source: str, body: bytes, headers: dict[str, str]) -> None:
    r = client.post(f"/webhooks/{source}", data=body, headers=headers)
    assert r.status_code == 401, r.get_data(as_text=True)
