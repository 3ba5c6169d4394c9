"""Sending forwarded messages (CONTRACT §9): one sender loop per endpoint, so a slow or failing
endpoint only ever waits for itself, and in order per (job, endpoint): a row is claimed only when
no earlier pending row of the same job and endpoint is left (delivered and dead ones do not hold
it back). Each message is a Standard Webhooks–signed POST of exactly the bytes signed, with a
short connect timeout; failures are retried with exponential backoff and jitter
(``outbox_backoff`` .. ``outbox_backoff_max``, ``Retry-After`` honoured) until
``forward_retry_for`` seconds after the message was owed, after which it is ``dead``.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import and_, exists, select
from sqlalchemy.orm import aliased
from standardwebhooks.webhooks import Webhook

from gateway.endpoints import EndpointConfig
from gateway.forward import FORWARD
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import OutboxItem
from gateway.outbox import DEAD, DELIVERED, PENDING, USER_AGENT, Result, _retry_after, backoff
from gateway.services import Services

log = logging.getLogger("gateway.forward")
CONNECT_TIMEOUT = 3.0


class EndpointSender:
    """Claims and sends one endpoint's due messages; woken at once after a commit that owes one."""

    def __init__(self, gw: Services, endpoint: EndpointConfig, *, batch: int = 50):
        self.gw = gw
        self.endpoint = endpoint
        self.batch = batch
        self.wake = threading.Event()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=3 * max(self.gw.config.outbox_timeout, 1) + 5)

    def drain(self) -> int:
        """Send until no due message of this endpoint is left; how many tries were made."""
        total = 0
        while rows := self._claim():
            for row in rows:
                try:
                    result = self.send(row)
                except Exception as exc:  # one broken row must not stop the others
                    log.exception("forward try failed", extra={"job_id": row.job_id})
                    result = Result(error=f"internal error ({type(exc).__name__})")
                self._record(row, result)
            total += len(rows)
        return total

    def _claim(self) -> list[OutboxItem]:
        now = utcnow()
        earlier = aliased(OutboxItem)
        held_back = exists().where(and_(earlier.kind == FORWARD, earlier.target == OutboxItem.target,
                                        earlier.job_id == OutboxItem.job_id, earlier.status == PENDING,
                                        earlier.id < OutboxItem.id))
        with self.gw.store.transaction() as w:
            stmt = (
                select(OutboxItem)
                .where(OutboxItem.kind == FORWARD, OutboxItem.target == self.endpoint.name, OutboxItem.status == PENDING,
                       OutboxItem.next_attempt_at <= now, ~held_back)
                .order_by(OutboxItem.id)
                .limit(self.batch)
            )
            if w.postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            rows = list(w.session.scalars(stmt).all())
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = now + self.lease
        return rows

    def send(self, row: OutboxItem) -> Result:
        """One signed POST of the row's message to the endpoint."""
        payload = row.payload
        body = json.dumps({k: payload[k] for k in ("type", "timestamp", "data")}, separators=(",", ":"), ensure_ascii=False)
        msg_id = payload["webhook_id"]
        signed_at = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": Webhook(self.endpoint.secrets[0]).sign(msg_id=msg_id, timestamp=signed_at, data=body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        timeout = (CONNECT_TIMEOUT, float(max(self.gw.config.outbox_timeout, 1)))
        try:
            response = requests.post(self.endpoint.url, data=body.encode("utf-8"), headers=headers, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return Result(error=type(exc).__name__)
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return Result(ok=True, status=status)
            if status == 410:
                return Result(status=status, give_up=True, error="410 Gone: the receiver disabled this endpoint")
            return Result(status=status, error=f"HTTP {status}", retry_after=_retry_after(response.headers.get("Retry-After")))

    def _record(self, row: OutboxItem, result: Result) -> None:
        config = self.gw.config
        now = utcnow()
        with self.gw.store.transaction() as w:
            item = w.session.scalars(select(OutboxItem).where(OutboxItem.id == row.id).with_for_update()).first()
            if item is None or item.status != PENDING or item.attempts != row.attempts:
                return  # settled meanwhile, or another process took the lease over
            detail: dict[str, Any] = {"endpoint": self.endpoint.name, "webhook_id": item.payload["webhook_id"],
                                      "type": item.payload["type"], "try": item.attempts, "status": result.status}
            if result.ok:
                item.status, item.delivered_at, item.last_error = DELIVERED, now, None
                detail["outcome"] = "delivered"
                self.gw.metrics.forward_latency.labels(endpoint=self.endpoint.name).observe((now - item.created_at).total_seconds())
            elif result.give_up or now - item.created_at >= timedelta(seconds=config.forward_retry_for):
                item.status, item.last_error = DEAD, result.error
                detail.update(outcome="dead", error=result.error)
            else:
                delay = backoff(item.attempts, config.outbox_backoff, config.outbox_backoff_max)
                if result.retry_after is not None:
                    delay = min(max(delay, result.retry_after), float(config.outbox_backoff_max))
                item.next_attempt_at = now + timedelta(seconds=delay)
                item.last_error = result.error
                detail.update(outcome="retry", error=result.error, next_try_at=iso(item.next_attempt_at))
            if item.job_id:
                w.trace(item.job_id, "forward", detail, at=now)
        self.gw.metrics.forward_total.labels(endpoint=self.endpoint.name, outcome=detail["outcome"]).inc()
        log.info("forward %s %s", self.endpoint.name, detail["outcome"],
                 extra={"job_id": item.job_id, "try": detail["try"], "status": result.status, "error": result.error})


def install(gw: Services) -> dict[str, EndpointSender]:
    """One sender loop per endpoint, on the outbox's interval and woken by commits that owe."""
    senders = {name: EndpointSender(gw, endpoint) for name, endpoint in gw.config.endpoints.items()}
    for name, sender in senders.items():
        gw.background.every(max(gw.config.outbox_interval, 1), f"forward-{name}", wake=sender.wake)(sender.drain)
    if senders:
        def wake_all() -> None:
            for sender in senders.values():
                sender.wake.set()

        gw.store.owing.append(lambda w, _changes: w.after_commit(wake_all))
    return senders
