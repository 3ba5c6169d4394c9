"""Replay (CONTRACT §10): run a stored delivery through its source's adapter again, as it is
configured now — e.g. after an adapter fix, or a body the adapter could not read when it came.

The body is parsed again, not verified again (it was verified when it arrived, and its signature
may be older than the tolerance by now). Its events go through the same code as a webhook
(gateway/recording.py): the ones not recorded yet are recorded and folded through
``Writer.record_event``, the ones already recorded are duplicates. The changed job versions owe
their ``job.*`` messages as any change does (gateway/forward.py); the delivery itself is not
forwarded again. Every job the replay touched gets a ``replay`` line in its trace with the
answer and who asked. Called alike by ``POST /api/deliveries/<id>/replay``, ``gateway replay``
and the support console.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select
from werkzeug.datastructures import Headers

from adapters.base import WebhookRequest
from gateway.errors import Conflict, NotFound
from gateway.models import Delivery
from gateway.recording import Recorded, answer_status, parse_verified, record_events
from gateway.store import Writer

if TYPE_CHECKING:
    from gateway.context import Gateway

log = logging.getLogger("gateway.replay")

#: the dlv_ prefix the console and forwarded messages show a delivery id with
DELIVERY_PREFIX = "dlv_"


def delivery_id_of(text: str) -> int:
    """A delivery id as given (``12`` or ``dlv_12``); NotFound for anything that cannot be one."""
    number = text.strip().removeprefix(DELIVERY_PREFIX)
    if not number.isdigit() or len(number) > 18:
        raise NotFound(f"no delivery {text[:40]}", code="delivery_not_found")
    return int(number)


def replay(gw: Gateway, delivery_id: int, *, by: str) -> dict[str, Any]:
    """Replay one stored delivery; the answer ``{"status", "events": [{"event_id", "decision"}], "by"}``.

    NotFound (404) for an unknown id, a rejected delivery (never stored with its body) and one
    whose body was pruned; Conflict (409) when its source is no longer configured; the adapter's
    PayloadError (400) when it still cannot read the body."""
    with gw.store.reading() as session:
        d = session.execute(select(Delivery.outcome, Delivery.body, Delivery.headers, Delivery.source, Delivery.received_at)
                            .where(Delivery.id == delivery_id)).first()
    if d is None or d.outcome == "rejected" or d.body is None:
        raise NotFound(f"no stored delivery {delivery_id}: unknown, rejected (never kept) or pruned", code="delivery_not_found")
    body, headers, source_name, received_at = bytes(d.body), Headers(list((d.headers or {}).items())), d.source, d.received_at
    source = gw.sources.get(source_name)
    if source is None:
        raise Conflict(f"delivery {delivery_id}'s source {source_name!r} is no longer configured", code="source_not_configured")
    wreq = WebhookRequest(body=body, headers=cast(Mapping[str, str], headers), content_type=headers.get("Content-Type", ""), received_at=received_at)
    events = parse_verified(source, wreq)

    def record(w: Writer) -> list[Recorded]:
        recorded = record_events(gw, w, source, events, body=body, received_at=received_at)
        status = answer_status(recorded)
        for job_id in dict.fromkeys(r.outcome.job_id for r in recorded if r.outcome.job_id):
            w.trace(job_id, "replay", {
                "delivery_id": delivery_id, "source": source_name, "outcome": status, "by": by,
                "events": [_event(r) for r in recorded if r.outcome.job_id == job_id],
            })
        w.finish_changes()
        return recorded

    recorded, _ = gw.store.write(record)
    answer = {"status": answer_status(recorded), "events": [_event(r) for r in recorded], "by": by}
    log.info("delivery replayed", extra={"delivery_id": delivery_id, "source": source_name, "status": answer["status"], "by": by,
                                         "job_id": next((r.outcome.job_id for r in recorded if r.outcome.job_id), None)})
    return answer


def _event(r: Recorded) -> dict[str, str]:
    return {"event_id": r.event.event_id, "decision": r.outcome.decision.value}
