"""``delivery.<source>`` messages (CONTRACT §9): every verified provider delivery that brought a
new event, or none, owes each endpoint whose ``events`` match ``delivery.<source>`` the provider's
own request, passed on verbatim — so a backend that verifies Stripe today keeps doing so.

The outbox row (kind ``forward``, gateway/forward.py) is written in the delivery's transaction and
holds only the delivery's id: the body and headers are read from the delivery row when the
message is sent (``delivery_request``), so a 1 MiB body is stored once, not once per endpoint.
The ``webhook-id`` is ``dlv_<delivery id>`` on every try. The message is:

- the body: the provider's exact bytes;
- the headers: the provider's (``gateway.recording.stored_headers`` kept them) except ``Host``,
  ``Content-Length`` and ``X-Forwarded-*``; its own ``webhook-*`` headers (a provider that signs
  with Standard Webhooks) renamed ``gateway-original-webhook-*``, because the gateway's own
  ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` sign the message; plus
  ``gateway-source`` and, when the delivery belongs to a job, ``gateway-job-id``.

A body pruned before its message could be sent (``delivery_retention_days`` shorter than the
endpoint's tries) can no longer be sent: the message is dead, and says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import select

from gateway.errors import NotFound
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import Delivery
from gateway.owed import FORWARD
from gateway.services import Services
from gateway.store import Store, Writer

Enqueue = Callable[..., bool]  # Outbox.enqueue

DELIVERY_PREFIX = "delivery."
#: request headers never passed on, besides those a delivery does not keep (recording.stored_headers)
NOT_FORWARDED = frozenset({"host", "content-length"})
ORIGINAL = "gateway-original-"  # a provider's own webhook-* headers travel under this prefix


def message_type(source: str) -> str:
    """``delivery.<source>``: what an endpoint's ``events`` patterns match."""
    return DELIVERY_PREFIX + source


def webhook_id(delivery_id: int) -> str:
    """The ``webhook-id`` of a delivery's message: the same on every try and every endpoint."""
    return f"dlv_{delivery_id}"


def wanted(gw: Services, source: str) -> bool:
    """Whether any endpoint wants this source's deliveries (then the delivery's id is needed in its transaction)."""
    kind = message_type(source)
    return any(e.wants(kind, source) for e in gw.config.endpoints.values())


def owe_delivery_message(gw: Services, enqueue: Enqueue, w: Writer, *, source: str, delivery_id: int, job_id: str | None) -> int:
    """In the delivery's transaction: one outbox row per endpoint that wants ``delivery.<source>``.
    The row carries ``job_id`` (so it keeps its place among that job's messages to the endpoint)
    and the delivery's id, never the body. How many rows were owed."""
    kind, msg_id = message_type(source), webhook_id(delivery_id)
    payload = {"type": kind, "timestamp": iso(utcnow()), "webhook_id": msg_id, "delivery_id": delivery_id}
    owed = 0
    for endpoint in gw.config.endpoints.values():
        if endpoint.wants(kind, source):
            owed += enqueue(w, kind=FORWARD, key=f"fwd:{endpoint.name}:{msg_id}", source=source, job_id=job_id,
                            payload=payload, target=endpoint.name)
    return owed


def is_delivery_message(payload: Mapping[str, object]) -> bool:
    """Whether an outbox row's payload is a ``delivery.<source>`` message (else a ``job.*`` one)."""
    return str(payload.get("type", "")).startswith(DELIVERY_PREFIX)


def forwarded_headers(headers: Mapping[str, str], *, source: str, job_id: str | None) -> dict[str, str]:
    """The headers a delivery's message carries (module docstring), names in lower case; the
    gateway's own ``webhook-*`` signature headers are added by the sender."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in NOT_FORWARDED or low.startswith("x-forwarded-") or low.startswith("gateway-"):
            continue  # gateway-*: only the gateway says which source and job
        out[ORIGINAL + low if low.startswith("webhook-") else low] = value
    out["gateway-source"] = source
    if job_id:
        out["gateway-job-id"] = job_id
    return out


def delivery_request(store: Store, delivery_id: int, job_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The exact body bytes and the headers of a delivery's message, read from the delivery row;
    NotFound when the row or its body is gone (pruned)."""
    with store.reading() as session:  # one query: the deferred columns named
        d = session.execute(select(Delivery.body, Delivery.headers, Delivery.source, Delivery.job_id).where(Delivery.id == delivery_id)).first()
    if d is None or d.body is None:
        raise NotFound(f"delivery {delivery_id}'s body was pruned (delivery_retention_days) before it could be forwarded",
                       code="delivery_pruned")
    return bytes(d.body), forwarded_headers(d.headers or {}, source=d.source, job_id=job_id or d.job_id)
