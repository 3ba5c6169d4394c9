"""The conformance kit itself: it passes a correct plugin adapter and catches broken ones."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from adapters import PayloadError, ProviderEvent, SignatureError
from adapters.base import WebhookRequest, check_header_token, utc_from_unix
from adapters.testing import AdapterConformance
from gateway.states import State

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
PLUGIN = PLUGINS / "example_adapter" / "gateway_example_adapter" / "__init__.py"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _load_example() -> Any:
    return _load(PLUGIN, "gateway_example_adapter_under_test")


example = _load_example()
ExampleAdapter = example.ExampleAdapter
BeaconAdapter = _load(PLUGINS / "token_adapter" / "gateway_token_adapter" / "__init__.py", "gateway_token_adapter_under_test").BeaconAdapter


def acme_sign(body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Acme-Signature": f"t={timestamp},v1={digest}", "Content-Type": "application/json"}, ""


class TestExampleConformance(AdapterConformance):
    """What docs/adapters.md shows a plugin author writing: the whole battery in a few lines."""

    adapter_class = ExampleAdapter
    secrets = ("acme-secret-1", "acme-secret-2")
    wrong_secret = "acme-secret-0"
    samples = [
        ({"id": "evt_1", "job": "job-42", "status": "waiting", "at": 1764331200}, State.QUEUED),
        ({"id": "evt_2", "job": "job-42", "status": "running", "at": 1764331201}, State.PROCESSING),
        ({"id": "evt_3", "job": "job-42", "status": "done", "at": 1764331202}, State.COMPLETE),
        ({"id": "evt_4", "job": "job-42", "status": "error", "at": 1764331202}, State.FAILED),
        ({"id": "evt_5", "job": "job-42", "status": "archived", "at": 1764331203}, None),
    ]

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return acme_sign(body, secret, timestamp)


# -- adapters with one bug each: the kit must fail them ---------------------------------------


class LeaksKeyError(ExampleAdapter):
    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        import json

        body = json.loads(request.body)
        return [ProviderEvent(event_id=body["id"], external_id=body["job"], occurred_at=utc_from_unix(body["at"]), state=State.QUEUED)]


class PastOnlyTolerance(ExampleAdapter):
    def check_timestamp(self, timestamp: Any, now: float | None = None) -> float:
        ts = float(timestamp)
        if time.time() - ts > self.tolerance:
            raise SignatureError("too old")
        return ts


class IgnoresBody(ExampleAdapter):
    def verify(self, request: WebhookRequest, secrets: Any) -> None:
        if not request.header("Acme-Signature"):
            raise SignatureError("missing")


class FirstSecretOnly(ExampleAdapter):
    def verify(self, request: WebhookRequest, secrets: Any) -> None:
        super().verify(request, list(secrets)[:1])


def _kit(adapter: type) -> TestExampleConformance:
    kit = TestExampleConformance()
    kit.adapter_class = adapter  # type: ignore[misc]
    return kit


def test_kit_catches_an_undeclared_error() -> None:
    with pytest.raises(Exception) as info:
        _kit(LeaksKeyError).test_fuzzed_fields_raise_only_declared_errors()
    assert not isinstance(info.value, (SignatureError, PayloadError))


def test_kit_catches_a_one_sided_tolerance() -> None:
    _kit(PastOnlyTolerance).test_rejects_stale_timestamp()
    with pytest.raises(pytest.fail.Exception):
        _kit(PastOnlyTolerance).test_rejects_future_timestamp()


def test_kit_catches_a_signature_that_ignores_the_body() -> None:
    with pytest.raises(pytest.fail.Exception):
        _kit(IgnoresBody).test_rejects_tampered_body()


def test_kit_catches_a_missing_rotation() -> None:
    with pytest.raises(SignatureError):
        _kit(FirstSecretOnly).test_accepts_either_rotating_secret()


def test_kit_catches_a_wrong_state() -> None:
    kit = TestExampleConformance()
    kit.samples = [({"id": "evt_9", "job": "j", "status": "done", "at": 1764331200}, State.FAILED)]  # type: ignore[misc]
    with pytest.raises(AssertionError):
        kit.test_samples_map_to_stated_state()


# -- a provider that signs no body: a fixed header token (signs_body = False) --------------------


class TestTokenConformance(AdapterConformance):
    """A header-token plugin passes the battery; what cannot apply is skipped, what can is checked."""

    adapter_class = BeaconAdapter
    secrets = ("beacon-token-1", "beacon-token-2")
    wrong_secret = "beacon-token-0"
    samples = [
        ({"delivery": "dlv_1", "task": "t-1", "phase": "pending", "at": "2026-11-28T12:00:00Z"}, State.QUEUED),
        ({"delivery": "dlv_2", "task": "t-1", "phase": "running", "at": "2026-11-28T12:00:01Z"}, State.PROCESSING),
        ({"delivery": "dlv_3", "task": "t-1", "phase": "finished", "at": "2026-11-28T12:00:02Z"}, State.COMPLETE),
        ({"delivery": "dlv_4", "task": "t-1", "phase": "crashed", "at": "2026-11-28T12:00:02Z"}, State.FAILED),
        ({"delivery": "dlv_5", "task": "t-1", "phase": "archived", "at": "2026-11-28T12:00:03Z"}, None),
    ]

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return {"X-Beacon-Token": secret, "Content-Type": "application/json"}, ""


class TestBasicAuthConformance(TestTokenConformance):
    """The same provider authenticating with HTTP basic auth (``check_header_token(scheme="Basic")``)."""

    secrets = ("beacon:pass-1", "beacon:pass-2")
    wrong_secret = "beacon:pass-0"

    class adapter_class(BeaconAdapter):
        def verify(self, request: WebhookRequest, secrets: Any) -> None:
            check_header_token(request, secrets, "Authorization", scheme="Basic")

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode(), "Content-Type": "application/json"}, ""


class ComparesWithEquals(BeaconAdapter):
    def verify(self, request: WebhookRequest, secrets: Any) -> None:
        if request.header("X-Beacon-Token") not in list(secrets):
            raise SignatureError("no")


class AcceptsAPrefix(BeaconAdapter):
    def verify(self, request: WebhookRequest, secrets: Any) -> None:
        given = request.header("X-Beacon-Token") or ""
        if not any(hmac.compare_digest(given[: len(s)], s) for s in secrets):
            raise SignatureError("no")


class ToleratesAMissingHeader(BeaconAdapter):
    def verify(self, request: WebhookRequest, secrets: Any) -> None:
        if request.header("X-Beacon-Token") is not None:
            super().verify(request, secrets)


def _token_kit(adapter: type) -> TestTokenConformance:
    kit = TestTokenConformance()
    kit.adapter_class = adapter  # type: ignore[misc]
    return kit


def test_kit_catches_a_token_compared_with_equals() -> None:
    with pytest.raises(AssertionError, match="compare_digest"):
        _token_kit(ComparesWithEquals).test_compares_in_constant_time()


def test_kit_catches_a_token_accepted_by_prefix() -> None:
    with pytest.raises(pytest.fail.Exception):
        _token_kit(AcceptsAPrefix).test_refuses_a_near_miss_token()


def test_kit_catches_a_token_adapter_that_lets_a_missing_header_through() -> None:
    with pytest.raises(pytest.fail.Exception):
        _token_kit(ToleratesAMissingHeader).test_rejects_missing_signature_headers()


def test_a_body_signing_adapter_is_still_held_to_the_tampered_body_check() -> None:
    class ClaimsToSignTheBody(BeaconAdapter):
        signs_body = True

    with pytest.raises(pytest.fail.Exception):
        _token_kit(ClaimsToSignTheBody).test_rejects_tampered_body()
