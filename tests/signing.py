"""Signing webhooks exactly as each provider does: the signers are adapters.signing (shared with
``gateway send``); Twilio's here is the twilio SDK's own ``RequestValidator``, the oracle that
adapters.signing.twilio_signature is tested against."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from adapters.signing import github_headers, mux_headers, standard_headers, stripe_headers  # noqa: F401  (re-exported)

STANDARD_SECRET = "whsec_" + base64.b64encode(b"test-standard-secret-0123456789ab").decode()
STANDARD_SECRET_2 = "whsec_" + base64.b64encode(b"test-standard-secret-rotated-9876").decode()
STRIPE_SECRET = "whsec_test_stripe_endpoint_secret_1"
STRIPE_SECRET_2 = "whsec_test_stripe_endpoint_secret_2"


def standard_body(external_id: str, state: str, occurred_at: str | None = None, **fields: Any) -> str:
    body = {"external_id": external_id, "state": state, "occurred_at": occurred_at or iso_now(), **fields}
    return json.dumps(body)


def stripe_event(etype: str, obj: dict[str, Any], event_id: str | None = None, created: int | None = None) -> str:
    return json.dumps({
        "id": event_id or "evt_" + uuid.uuid4().hex[:24], "object": "event", "api_version": "2024-06-20",
        "created": created if created is not None else int(time.time()), "livemode": False, "type": etype,
        "data": {"object": obj}, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
    })


def iso_now(offset_ms: int = 0) -> str:
    t = time.time() + offset_ms / 1000
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# -- the other built-in providers --------------------------------------------------------------

GITHUB_SECRET = "test-github-webhook-secret-1"
GITHUB_SECRET_2 = "test-github-webhook-secret-2"
MUX_SECRET = "test-mux-signing-secret-1"
MUX_SECRET_2 = "test-mux-signing-secret-2"
TWILIO_TOKEN = "test-twilio-auth-token-0001"
TWILIO_TOKEN_2 = "test-twilio-auth-token-0002"
REPLICATE_SECRET = "whsec_" + base64.b64encode(b"test-replicate-secret-0123456789").decode()
REPLICATE_SECRET_2 = "whsec_" + base64.b64encode(b"test-replicate-secret-rotated-987").decode()
RENDER_SECRET = "whsec_" + base64.b64encode(b"test-render-secret-0123456789abcd").decode()
RENDER_SECRET_2 = "whsec_" + base64.b64encode(b"test-render-secret-rotated-98765").decode()
#: the URL Twilio signs for the test source behind a (pretend) TLS proxy
TWILIO_PUBLIC_URL = "https://gw.example.com/webhooks/twilio"


def twilio_headers(token: str, url: str, params: Any) -> dict[str, str]:
    """``X-Twilio-Signature`` computed by Twilio's own ``RequestValidator``."""
    from twilio.request_validator import RequestValidator

    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params), "Content-Type": "application/x-www-form-urlencoded"}
