"""Signing a delivery exactly as each built-in provider signs it: the sending half of each
adapter's ``verify``, shared by ``gateway send``, the conformance tests and tests/signing.py.

Stripe's header comes from the stripe SDK and Standard Webhooks' (also Replicate's and Render's)
from the standardwebhooks library; GitHub's, Mux's and Twilio's are the HMACs their docs give
(Twilio's is checked against the twilio SDK's ``RequestValidator`` in the tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import stripe
from standardwebhooks.webhooks import Webhook


def stripe_headers(secret: str, body: str, ts: int | None = None) -> dict[str, str]:
    """``Stripe-Signature: t=…,v1=…`` made by the stripe SDK (HMAC-SHA256 of ``{t}.{body}``)."""
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=int(time.time()) if ts is None else ts)
    return {"Stripe-Signature": header, "content-type": "application/json"}


def standard_headers(secret: str, body: bytes | str, msg_id: str | None = None, ts: float | None = None) -> dict[str, str]:
    """Standard Webhooks headers made by the ``standardwebhooks`` library's own signer."""
    data = body.decode() if isinstance(body, bytes) else body
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    when = datetime.fromtimestamp(int(ts if ts is not None else time.time()), tz=UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=data)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature,
            "content-type": "application/json"}


def github_headers(secret: str, body: bytes, event: str, delivery: str | None = None) -> dict[str, str]:
    """``X-Hub-Signature-256`` as GitHub's docs compute it: ``sha256=`` + hex HMAC-SHA256 of the body."""
    digest = hmac.new(secret.encode("utf-8"), msg=body, digestmod=hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": "sha256=" + digest, "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/8fe3c0f",
    }


def mux_headers(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    """``Mux-Signature: t=…,v1=…`` as Mux documents it: hex HMAC-SHA256 of ``{t}.{body}``."""
    t = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(secret.encode("utf-8"), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Mux-Signature": f"t={t},v1={digest}", "Content-Type": "application/json"}


def twilio_signature(token: str, url: str, params: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` as Twilio's ``RequestValidator.compute_signature`` makes it: base64
    HMAC-SHA1 of the URL followed by each POST parameter's name and value, sorted by name."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    signed = url + "".join(name + value for name, value in sorted(pairs))
    return base64.b64encode(hmac.new(token.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1).digest()).decode("ascii")


def twilio_headers(token: str, url: str, params: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    """The headers of a Twilio status callback to ``url`` with form ``params``."""
    return {"X-Twilio-Signature": twilio_signature(token, url, params), "Content-Type": "application/x-www-form-urlencoded"}
