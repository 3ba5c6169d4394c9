"""Stripe (https://docs.stripe.com/webhooks).

Header ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]``; signed string ``{t}.{raw body}``,
HMAC-SHA256 with the endpoint secret ``whsec_…`` used as-is. Verification is the official
SDK's ``stripe.WebhookSignature.verify_header``; it checks only old timestamps, so the
future side of the tolerance is checked here.

Event ``id`` (``evt_…``) dedups, ``data.object.id`` is the external id, ``created`` (unix
seconds) orders. Stripe does not guarantee order and may deliver an event twice.

Status read (reconciliation): by the external id's prefix, ``GET {api_base}/payment_intents/{id}``
(``pi_``), ``/checkout/sessions/{id}`` (``cs_``) or ``/invoices/{id}`` (``in_``), with the
secret (or restricted, read-only) key from ``api_key_env`` as a bearer token; ``api_base``
defaults to ``https://api.stripe.com/v1``. The object's ``status`` maps by ``STATUS_STATES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import stripe

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest, api_answer, api_request, bearer, json_body, read_event_id, utc_from_unix
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

SIGNATURE_HEADER = "Stripe-Signature"

Q, P, C, F = State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED


def _checkout_completed(obj: Mapping[str, Any]) -> State:
    """complete when paid at once (card) or nothing to pay, else processing (a delayed method finishes later)"""
    return C if obj.get("payment_status") in ("paid", "no_payment_required") else P


#: event type -> canonical state (or a function of data.object for the conditional ones)
EVENT_STATES: Mapping[str, State | Callable[[Mapping[str, Any]], State]] = {
    # PaymentIntent
    "payment_intent.created": Q,
    "payment_intent.processing": P,
    "payment_intent.requires_action": P,
    "payment_intent.amount_capturable_updated": P,
    "payment_intent.succeeded": C,
    "payment_intent.payment_failed": F,
    "payment_intent.canceled": F,
    # Checkout Session
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": C,
    "checkout.session.async_payment_failed": F,
    "checkout.session.expired": F,
    # Invoice
    "invoice.created": Q,
    "invoice.finalized": Q,
    "invoice.paid": C,
    "invoice.payment_succeeded": C,
    "invoice.payment_failed": F,
    "invoice.payment_action_required": P,
    "invoice.voided": F,
    "invoice.marked_uncollectible": F,
    # Reporting (the closest Stripe has to a background job)
    "reporting.report_run.succeeded": C,
    "reporting.report_run.failed": F,
}

#: error code per failing event type, when the object does not carry a better one
FAILURE_CODES: Mapping[str, tuple[str, str, bool]] = {
    "payment_intent.payment_failed": ("payment_failed", "The payment failed.", True),
    "payment_intent.canceled": ("canceled", "The payment was canceled.", False),
    "checkout.session.async_payment_failed": ("payment_failed", "The delayed payment failed.", True),
    "checkout.session.expired": ("expired", "The checkout session expired before payment.", False),
    "invoice.payment_failed": ("payment_failed", "The invoice payment failed.", True),
    "invoice.voided": ("voided", "The invoice was voided.", False),
    "invoice.marked_uncollectible": ("uncollectible", "The invoice was marked uncollectible.", False),
    "reporting.report_run.failed": ("report_failed", "The report run failed.", True),
}


def _requires_payment_method(obj: Mapping[str, Any]) -> State:
    """failed after a declined try (``last_payment_error`` set), else queued (nothing tried yet)"""
    return F if isinstance(obj.get("last_payment_error"), dict) else Q


#: status read: id prefix -> (API path, object words)
OBJECTS: Mapping[str, tuple[str, str]] = {
    "pi_": ("/payment_intents/", "payment_intent"),
    "cs_": ("/checkout/sessions/", "checkout.session"),
    "in_": ("/invoices/", "invoice"),
}
#: status read: (object, ``status``) -> state (or a function of the object); what a webhook of
#: the same moment would say (EVENT_STATES)
STATUS_STATES: Mapping[tuple[str, str], State | Callable[[Mapping[str, Any]], State]] = {
    ("payment_intent", "requires_payment_method"): _requires_payment_method,
    ("payment_intent", "requires_confirmation"): Q,
    ("payment_intent", "requires_action"): P,
    ("payment_intent", "processing"): P,
    ("payment_intent", "requires_capture"): P,
    ("payment_intent", "succeeded"): C,
    ("payment_intent", "canceled"): F,
    ("checkout.session", "open"): Q,
    ("checkout.session", "complete"): _checkout_completed,
    ("checkout.session", "expired"): F,
    ("invoice", "draft"): Q,
    ("invoice", "open"): Q,
    ("invoice", "paid"): C,
    ("invoice", "void"): F,
    ("invoice", "uncollectible"): F,
}
#: status read: the webhook event type whose error words a failing status shares
STATUS_FAILURES: Mapping[tuple[str, str], str] = {
    ("payment_intent", "requires_payment_method"): "payment_intent.payment_failed",
    ("payment_intent", "canceled"): "payment_intent.canceled",
    ("checkout.session", "expired"): "checkout.session.expired",
    ("invoice", "void"): "invoice.voided",
    ("invoice", "uncollectible"): "invoice.marked_uncollectible",
}
#: status read: ``status_transitions`` key that dates a status (invoices)
TRANSITIONS: Mapping[str, str] = {"open": "finalized_at", "paid": "paid_at", "void": "voided_at", "uncollectible": "marked_uncollectible_at"}
DEFAULT_API_BASE = "https://api.stripe.com/v1"


def _str(value: Any, limit: int = 2000) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


class StripeAdapter(Adapter):
    """Stripe events for PaymentIntents, Checkout Sessions, Invoices and report runs."""

    name = "stripe"

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return [(f"`{etype}`", rule.value if isinstance(rule, State) else (rule.__doc__ or "").strip()) for etype, rule in EVENT_STATES.items()]

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        header = request.header(SIGNATURE_HEADER)
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        timestamps = [item.partition("=")[2] for item in header.split(",") if item.strip().startswith("t=")]
        if len(timestamps) != 1 or not timestamps[0].strip().isdigit():
            raise SignatureError("Stripe-Signature has no single t= timestamp")
        self.check_timestamp(timestamps[0].strip())  # both ways; the SDK checks only the past
        try:
            payload = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("body is not UTF-8, so it cannot carry a Stripe signature") from None
        for secret in secrets:
            try:
                stripe.WebhookSignature.verify_header(payload, header, secret, self.tolerance)
                return
            except stripe.SignatureVerificationError:
                continue
            except (ValueError, IndexError, TypeError):
                continue
        raise SignatureError("no signature matches any active secret")

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        event = json_body(request)
        if not isinstance(event, dict):
            raise PayloadError("a Stripe event is a JSON object")
        if event.get("object") == "v2.core.event":
            raise PayloadError("thin (v2) event notifications are not supported; use a snapshot event destination")
        event_id, etype, created = event.get("id"), event.get("type"), event.get("created")
        obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
        if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
            raise PayloadError("event id missing")
        if not isinstance(etype, str) or not etype:
            raise PayloadError("event type missing")
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise PayloadError("event created missing")
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"] or len(obj["id"]) > 255:
            raise PayloadError("data.object.id missing")
        rule = EVENT_STATES.get(etype)
        state = rule(obj) if callable(rule) else rule
        return [
            ProviderEvent(
                event_id=event_id,
                external_id=obj["id"],
                occurred_at=utc_from_unix(created),
                state=state,
                type=etype,
                error=self._error(etype, obj) if state is F else None,
                result=self._result(obj) if state is C else None,
                label=_str(obj.get("description"), 200),
            )
        ]

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return [(f"{obj} `{status}`", rule.value if isinstance(rule, State) else (rule.__doc__ or "").strip())
                for (obj, status), rule in STATUS_STATES.items()]

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /v1/payment_intents/{id}``, ``/v1/checkout/sessions/{id}`` or ``/v1/invoices/{id}`` by prefix."""
        found = next((path for prefix, (path, _) in OBJECTS.items() if external_id.startswith(prefix)), None)
        if found is None:
            return None
        return api_request(self, DEFAULT_API_BASE, found + quote(external_id, safe=""), bearer(api_key))

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        obj = api_answer("Stripe", status, body)
        kind, word = obj.get("object"), obj.get("status")
        if not isinstance(kind, str) or not isinstance(word, str) or obj.get("id") != external_id:
            raise PayloadError("the answer is not the object asked for, with a status")
        rule = STATUS_STATES.get((kind, word))
        state = rule(obj) if callable(rule) else rule
        if state is None:
            raise PayloadError(f"unknown {kind[:40]} status {word[:40]!r}")
        at = _status_time(obj, word, state)
        etype = STATUS_FAILURES.get((kind, word), "") if state is F else ""
        return [ProviderEvent(
            event_id=read_event_id(external_id, word, at), external_id=external_id, occurred_at=at or read_at, state=state,
            type=f"api.{kind}.{word}"[:100], error=self._error(etype, obj) if state is F else None,
            result=self._result(obj) if state is C else None, label=_str(obj.get("description"), 200))]

    @staticmethod
    def _error(etype: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        code, message, retryable = FAILURE_CODES.get(etype, ("failed", "The job failed.", True))
        last = obj.get("last_payment_error") or obj.get("last_finalization_error")
        if isinstance(last, dict):
            code = _str(last.get("decline_code"), 64) or _str(last.get("code"), 64) or code
            message = _str(last.get("message")) or message
        if etype == "reporting.report_run.failed":
            message = _str(obj.get("error")) or message
        if etype == "payment_intent.canceled" and _str(obj.get("cancellation_reason"), 64):
            message = f"The payment was canceled ({obj['cancellation_reason']})."
        return {"code": code, "message": message, "retryable": retryable}

    @staticmethod
    def _result(obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"id": obj.get("id"), "object": obj.get("object")}
        file = obj.get("result")
        if isinstance(file, dict) and isinstance(file.get("url"), str):
            result["url"] = file["url"]  # report run: the result File
        for key in ("hosted_invoice_url", "invoice_pdf", "receipt_url", "url"):
            if isinstance(obj.get(key), str) and "url" not in result:
                result["url"] = obj[key]
        for key in ("amount", "amount_paid", "amount_total", "currency"):
            if obj.get(key) is not None:
                result[key] = obj[key]
        return result


def _status_time(obj: Mapping[str, Any], word: str, state: State) -> datetime | None:
    """The object's own time for its status: an invoice's ``status_transitions``, a
    PaymentIntent's ``canceled_at``, else (for a live status) ``created``; None for a terminal
    status Stripe dates nowhere (the read's time is used)."""
    transitions = obj.get("status_transitions")
    stamp = transitions.get(TRANSITIONS.get(word, "")) if isinstance(transitions, dict) else None
    if stamp is None and word == "canceled":
        stamp = obj.get("canceled_at")
    if stamp is None and state in (Q, P):
        stamp = obj.get("created")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        return None
    return utc_from_unix(stamp)
