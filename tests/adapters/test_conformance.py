"""Every built-in adapter passes the conformance kit (adapters.testing), signed with the
providers' own code: stripe's SDK, standardwebhooks, Twilio's RequestValidator, and GitHub's and
Mux's documented HMACs."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from werkzeug.datastructures import MultiDict

from adapters.fixtures import load, load_api
from adapters.github import GitHubAdapter
from adapters.mux import MuxAdapter
from adapters.render import RenderAdapter
from adapters.replicate import ReplicateAdapter
from adapters.standard import StandardAdapter
from adapters.stripe import StripeAdapter
from adapters.testing import READ_AT, AdapterConformance
from adapters.twilio import TwilioAdapter
from gateway.states import State
from tests import signing


def samples(provider: str, *, skip: tuple[str, ...] = ()) -> list[tuple[Any, State | None]]:
    """The provider's fixtures as (body, expected state)."""
    out = []
    for name, fx in load(provider).items():
        if name in skip:
            continue
        state = fx["expect"]["state"]
        out.append((fx["body"], State(state) if state else None))
    return out


def status_reads(provider: str) -> list[tuple[str, int, Any, State | None]]:
    """The provider's status-read answers (adapters/fixtures/<provider>/api) as the kit takes them."""
    return [(fx["external_id"], fx["status"], fx["body"], State(fx["expect"]["state"]) if fx["expect"]["state"] else None)
            for fx in load_api(provider).values()]


def standard_sign(body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")  # the library signs text; the adapter must still refuse it
    return signing.standard_headers(secret, text, ts=timestamp), ""


class TestStandardConformance(AdapterConformance):
    adapter_class = StandardAdapter
    secrets = (signing.STANDARD_SECRET, signing.STANDARD_SECRET_2)
    wrong_secret = "whsec_" + "d3Jvbmctc2VjcmV0LWZvci10aGUtdGVzdHMtMDA="
    samples = samples("standard")

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return standard_sign(body, secret, timestamp)


class TestStripeConformance(AdapterConformance):
    adapter_class = StripeAdapter
    secrets = (signing.STRIPE_SECRET, signing.STRIPE_SECRET_2)
    wrong_secret = "whsec_not_this_endpoint"
    samples = samples("stripe")
    status_reads = status_reads("stripe")

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return signing.stripe_headers(secret, body.decode("utf-8"), ts=timestamp), ""


class TestReplicateConformance(AdapterConformance):
    adapter_class = ReplicateAdapter
    secrets = (signing.REPLICATE_SECRET, signing.REPLICATE_SECRET_2)
    wrong_secret = signing.STANDARD_SECRET
    samples = samples("replicate")
    status_reads = status_reads("replicate")

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return standard_sign(body, secret, timestamp)


class TestRenderConformance(AdapterConformance):
    adapter_class = RenderAdapter
    options = {"api_base": "http://127.0.0.1:9/v1"}
    secrets = (signing.RENDER_SECRET, signing.RENDER_SECRET_2)
    wrong_secret = signing.STANDARD_SECRET
    samples = samples("render", skip=("api_event_deploy_ended", "api_event_deploy_ended_failed"))
    status_reads = status_reads("render")
    status_options = {"service_id": "srv-d1l6h5ngi27c73b2p1q0"}

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return standard_sign(body, secret, timestamp)


class TestGitHubConformance(AdapterConformance):
    adapter_class = GitHubAdapter
    secrets = (signing.GITHUB_SECRET, signing.GITHUB_SECRET_2)
    wrong_secret = "not-the-github-secret"
    samples = samples("github")
    status_reads = status_reads("github")
    status_options = {"repository": "octo-org/octo-repo"}
    signs_timestamp = False

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        event = next((k for k in ("workflow_job", "workflow_run") if isinstance(doc, dict) and k in doc), "ping")
        # a stable delivery id per body, as a redelivery keeps it
        delivery = str(uuid.uuid5(uuid.NAMESPACE_URL, body.hex()))
        return signing.github_headers(secret, body, event, delivery), ""


class TestMuxConformance(AdapterConformance):
    adapter_class = MuxAdapter
    secrets = (signing.MUX_SECRET, signing.MUX_SECRET_2)
    wrong_secret = "not-the-mux-secret"
    samples = samples("mux")
    status_reads = status_reads("mux")
    status_api_key = "mux-token-id-0123:mux-token-secret-4567"

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return signing.mux_headers(secret, body, ts=timestamp), ""


class TestTwilioConformance(AdapterConformance):
    adapter_class = TwilioAdapter
    options = {"public_url": signing.TWILIO_PUBLIC_URL}
    secrets = (signing.TWILIO_TOKEN, signing.TWILIO_TOKEN_2)
    wrong_secret = "not-the-auth-token"
    samples = samples("twilio")
    status_reads = status_reads("twilio")
    status_options = {"account_sid": "AC3c4a1b0e7f2d5c6b9a8e1f0d3c2b4a5e"}
    status_api_key = "SK0123456789abcdef0123456789abcdef:api-key-secret-89ab"
    signs_timestamp = False
    body_format = "form"

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        params = MultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return signing.twilio_headers(secret, signing.TWILIO_PUBLIC_URL, params), signing.TWILIO_PUBLIC_URL


KITS = {"standard": TestStandardConformance, "stripe": TestStripeConformance, "replicate": TestReplicateConformance,
        "render": TestRenderConformance, "github": TestGitHubConformance, "mux": TestMuxConformance, "twilio": TestTwilioConformance}
ALL_FIXTURES = [(provider, name) for provider in sorted(KITS) for name in load(provider) if not name.startswith("api_event_")]


@pytest.mark.parametrize("provider, name", ALL_FIXTURES)
def test_every_fixture_maps_as_it_says(provider: str, name: str) -> None:
    """Each fixture's stated state and error code, through its adapter, signed by its provider's code."""
    kit = KITS[provider]()
    fx = load(provider)[name]
    req = kit.request(fx["body"])
    adapter = kit.make_adapter()
    adapter.verify(req, list(kit.secrets))
    (event,) = adapter.parse(req)
    assert event.state == (State(fx["expect"]["state"]) if fx["expect"]["state"] else None)
    assert (event.error or {}).get("code") == fx["expect"].get("error_code")


ALL_API_FIXTURES = [(provider, name) for provider in sorted(KITS) for name in load_api(provider)]


@pytest.mark.parametrize("provider, name", ALL_API_FIXTURES)
def test_every_status_answer_maps_as_it_says(provider: str, name: str) -> None:
    """Each status-read fixture: the adapter describes a GET of its ``path`` under the provider's
    own API, and reads the answer to the stated state and error code."""
    kit = KITS[provider]()
    fx = load_api(provider)[name]
    adapter = kit.make_status_adapter()
    request = adapter.status_request(fx["external_id"], kit.status_api_key)
    assert request is not None and urlsplit(request.url).path == fx["path"]
    (event,) = adapter.parse_status(fx["external_id"], fx["status"], json.dumps(fx["body"]).encode(), READ_AT)
    assert event.state == (State(fx["expect"]["state"]) if fx["expect"]["state"] else None)
    assert (event.error or {}).get("code") == fx["expect"].get("error_code")


def test_status_reads_are_offered_by_every_provider_adapter() -> None:
    """The built-in providers all describe a status read; the Standard Webhooks adapter has no API to ask."""
    assert {p for p, kit in KITS.items() if kit.adapter_class.offers_status_read()} == set(KITS) - {"standard"}
    assert all(load_api(p) for p in KITS if p != "standard")
