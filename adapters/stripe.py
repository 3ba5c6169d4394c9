"""Stripe (https://docs.stripe.com/webhooks).

Header ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]``; signed string ``{t}.{raw body}``,
HMAC-SHA256 with the endpoint secret ``whsec_…`` used as-is. Verification is the official
SDK's ``stripe.WebhookSignature.verify_header``; it checks only old timestamps, so the
future side of the tolerance is checked here.

Event ``id`` (``evt_…``) dedups, ``data.object.id`` is the external id, ``created`` (unix
seconds) orders. Stripe does not guarantee order and may deliver an event twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import stripe

from adapters.base import Adapter, ProviderEvent, WebhookRequest, json_body, utc_from_unix
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
