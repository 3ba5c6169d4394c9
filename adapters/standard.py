"""Standard Webhooks (https://www.standardwebhooks.com), for any service that sends the
gateway's canonical fields — and for the integrator's own Celery / RQ / Sidekiq / BullMQ /
pg-table workers.

Headers: ``webhook-id`` (the event id, dedup key), ``webhook-timestamp`` (unix seconds),
``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>``; several during rotation).
Signed string: ``{webhook-id}.{webhook-timestamp}.{body}`` with the base64-decoded
``whsec_`` secret. The tolerance is the gateway's ``signature_tolerance``, both ways.

Body (only ``external_id``, ``state`` and ``occurred_at`` are required)::

    {"external_id": "import-42", "state": "processing", "occurred_at": "2026-11-28T12:00:01.250Z",
     "progress": {"current": 1240, "total": 4000, "step": "importing rows"},
     "queue": {"name": "imports", "position": 4, "total": 12},
     "error": {"code": "bad_row", "message": "Row 1,241: missing email", "retryable": true},
     "result": {"url": "…"}, "label": "Import customers.csv"}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from adapters.base import Adapter, ProviderEvent, WebhookRequest, constant_time_in, json_body, utc_from_iso
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

MAX_TEXT = 2000
MAX_ID = 255


def verify_standard(request: WebhookRequest, secrets: Sequence[str], adapter: Adapter) -> str:
    """Verify a Standard Webhooks delivery with the library's signer; return the webhook-id.

    ``Webhook.verify`` is not called because it fixes the window at 5 minutes and parses JSON
    after verifying; the signature itself is computed by the library.
    """
    msg_id = request.header(ID_HEADER)
    timestamp = request.header(TIMESTAMP_HEADER)
    signature = request.header(SIGNATURE_HEADER)
    if not (msg_id and timestamp and signature):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(msg_id) > MAX_ID:
        raise SignatureError("webhook-id too long")
    ts = adapter.check_timestamp(timestamp if timestamp.isdigit() else None)
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("body is not UTF-8, so it cannot carry a Standard Webhooks signature") from None
    given: list[bytes] = []
    for part in signature.split(" "):
        version, _, value = part.partition(",")
        if version != "v1" or not value:
            continue
        try:
            given.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not given:
        raise SignatureError("no v1 signature in webhook-signature")
    signed_at = datetime.fromtimestamp(int(ts), tz=UTC)
    for secret in secrets:
        try:
            expected = Webhook(secret).sign(msg_id=msg_id, timestamp=signed_at, data=body)
        except Exception:  # a malformed configured secret: skip it, the others may verify
            continue
        if any(constant_time_in(base64.b64decode(expected.split(",", 1)[1]), [g]) for g in given):
            return msg_id
    raise SignatureError("no signature matches any active secret")


def _text(value: Any, key: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string")
    return value[:limit]


def _count(value: Any, key: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 or value > 1e15:
        raise PayloadError(f"{key} must be a non-negative number")
    return int(value) if float(value).is_integer() else value


def _obj(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadError(f"{key} must be an object")
    return value


def canonical_fields(body: Any, *, require_external_id: bool = True) -> dict[str, Any]:
    """Validate the canonical body shape shared by the standard adapter and the worker events API."""
    if not isinstance(body, dict):
        raise PayloadError("body must be a JSON object")
    raw_state = body.get("state")
    if raw_state is None:
        raise PayloadError("state is required: one of queued, processing, complete, failed", code="missing_state")
    try:
        state = State(raw_state)
    except ValueError:
        raise PayloadError(f"unknown state {str(raw_state)[:40]!r}: one of queued, processing, complete, failed", code="unknown_state") from None
    external_id = body.get("external_id")
    if require_external_id and (not isinstance(external_id, str) or not external_id or len(external_id) > MAX_ID):
        raise PayloadError("external_id is required: a string of 1-255 characters", code="missing_external_id")
    if "occurred_at" not in body:
        raise PayloadError("occurred_at is required (ISO 8601)", code="missing_occurred_at")
    occurred_at = utc_from_iso(body["occurred_at"])
    progress = _obj(body.get("progress"), "progress")
    if progress is not None:
        progress = {
            "current": _count(progress.get("current"), "progress.current"),
            "total": _count(progress.get("total"), "progress.total"),
            "step": _text(progress.get("step"), "progress.step", 200),
        }
    queue = _obj(body.get("queue"), "queue")
    if queue is not None:
        position, total = _count(queue.get("position"), "queue.position"), _count(queue.get("total"), "queue.total")
        queue = {k: v for k, v in (("name", _text(queue.get("name"), "queue.name", 128)), ("position", position), ("total", total)) if v is not None}
    error = _obj(body.get("error"), "error")
    if error is not None:
        retryable = error.get("retryable", True)
        if not isinstance(retryable, bool):
            raise PayloadError("error.retryable must be true or false")
        error = {
            "code": _text(error.get("code"), "error.code", 64) or "failed",
            "message": _text(error.get("message"), "error.message") or "The job failed.",
            "retryable": retryable,
        }
    result = _obj(body.get("result"), "result")
    return {
        "external_id": external_id,
        "state": state,
        "occurred_at": occurred_at,
        "progress": progress,
        "queue": queue,
        "error": error,
        "result": result,
        "label": _text(body.get("label"), "label", 200),
    }


class StandardAdapter(Adapter):
    """Canonical job fields signed with Standard Webhooks."""

    name = "standard"

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return [(f"`\"state\": \"{s.value}\"`", s.value) for s in State]

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        verify_standard(request, secrets, self)

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        fields = canonical_fields(json_body(request))
        event_id = request.header(ID_HEADER)
        if not event_id:
            raise PayloadError("webhook-id header missing")
        return [ProviderEvent(event_id=event_id, type=f"job.{fields['state'].value}", **fields)]
