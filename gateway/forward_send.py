"""Sending forwarded messages (CONTRACT §9): one sender loop per endpoint, so a slow or failing
endpoint only ever waits for itself, and in order per (job, endpoint): a row is claimed only when
no earlier pending row of the same job and endpoint is left (delivered, dead and coalesced ones
do not hold it back). Claiming, signing, recording and the retry schedule are the outbox's
(gateway/tries.py); what is particular here:

- At once, in every process: a sender wakes on every committed change its process's relay bus
  hears (``Hub.on_notice``), from whichever process committed it, not only on the outbox interval;
  a retry wakes it when due.
- Tries are bounded by time, ``forward_retry_for`` seconds after the message was owed, after
  which it is ``dead`` (``outbox_max_attempts`` does not apply).
- ``410 Gone`` disables the endpoint (``endpoint_states``, read by every process): its senders
  stop, its messages stay pending, and flow again in order once an operator enables it.
- Up to ``PARALLEL`` messages of different jobs are in flight at once per endpoint and process
  (never two of one job), and a group's tries are recorded in one transaction.
- Progress is paced: a job's ``job.progress`` goes out at most once per ``progress_interval_ms``
  per endpoint and process; meanwhile newer progress replaces it (gateway/forward.py).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import aliased

from gateway.endpoints import EndpointConfig
from gateway.errors import GatewayError
from gateway.forward import PROGRESS, request_of
from gateway.ids import utcnow
from gateway.messages import disable_endpoint, endpoint_enabled
from gateway.models import Job, OutboxItem
from gateway.owed import FORWARD, PENDING
from gateway.relay.relay import Relay
from gateway.services import Services
from gateway.tries import Result, claim, lease, post_signed, settle, still_ours

log = logging.getLogger("gateway.forward")
CONNECT_TIMEOUT = 3.0
PARALLEL = 8  # messages of different jobs in flight at once, per endpoint and process


class EndpointSender:
    """Claims and sends one endpoint's due messages; woken at once after a commit that owes one."""

    def __init__(self, gw: Services, endpoint: EndpointConfig, *, batch: int = 50, parallel: int = PARALLEL):
        self.gw = gw
        self.endpoint = endpoint
        self.batch = batch
        self.parallel = max(parallel, 1)
        self.wake = threading.Event()
        self.pace = max(gw.config.progress_interval_ms, 0) / 1000
        self._progress_sent: dict[str, float] = {}  # job id → time.monotonic() of its last progress claimed here
        self._held_until: float | None = None  # the earliest a paced progress row may go
        self._timer: threading.Timer | None = None
        self._timer_at = float("inf")
        self._lock = threading.Lock()

    def drain(self) -> int:
        """Send until no due message of this endpoint is left (or it is disabled); how many tries
        were made. Then, if a try failed or progress is paced, arrange to wake when that is due."""
        if not self._anything_due() or not endpoint_enabled(self.gw.store, self.endpoint.name):
            return 0  # most wake-ups are for changes that owe this endpoint nothing: no write transaction
        total, later = 0, self._held_until is not None
        while rows := self._claim():
            later = later or self._held_until is not None
            for start in range(0, len(rows), self.parallel):
                chunk = rows[start:start + self.parallel]
                outcomes = self._record(chunk, self._send_all(chunk))
                if "disabled" in outcomes:
                    self._release(rows[start + len(chunk):])
                    return total + start + len(chunk)
                later = later or "retry" in outcomes
            total += len(rows)
        if later or self._held_until is not None:  # the last claim may have held a paced progress row
            self._wake_when_due()
        return total

    def _send_all(self, rows: list[OutboxItem]) -> list[Result]:
        """Send ``rows`` at once (one job each: a claim holds one message per job), one thread
        (a greenlet under gevent) per row; their results in order."""
        results: list[Result] = [Result() for _ in rows]

        def one(i: int) -> None:
            try:
                results[i] = self.send(rows[i])
            except Exception as exc:  # one broken row must not stop the others
                log.exception("forward try failed", extra={"job_id": rows[i].job_id})
                results[i] = Result(error=f"internal error ({type(exc).__name__})")

        if len(rows) == 1:
            one(0)
            return results
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(rows))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def _anything_due(self) -> bool:
        """A read (never the write lock on SQLite): is any message of this endpoint due, or a
        paced progress row waiting?"""
        if self._held_until is not None:
            return True
        with self.gw.store.reading() as session:
            return session.scalar(select(OutboxItem.id).where(
                OutboxItem.kind == FORWARD, OutboxItem.target == self.endpoint.name, OutboxItem.status == PENDING,
                OutboxItem.next_attempt_at <= utcnow()).limit(1)) is not None

    def _heads(self) -> Any:
        """This endpoint's pending rows with no earlier pending row of the same job: the next of each job."""
        earlier = aliased(OutboxItem)
        held_back = exists().where(and_(earlier.kind == FORWARD, earlier.target == OutboxItem.target,
                                        earlier.job_id == OutboxItem.job_id, earlier.status == PENDING,
                                        earlier.id < OutboxItem.id))
        return and_(OutboxItem.kind == FORWARD, OutboxItem.target == self.endpoint.name, OutboxItem.status == PENDING, ~held_back)

    def _claim(self) -> list[OutboxItem]:
        stmt = (
            select(OutboxItem)
            .where(self._heads(), OutboxItem.next_attempt_at <= utcnow())
            .order_by(OutboxItem.id)
            .limit(self.batch)
        )
        self._held_until = None
        return claim(self.gw.store, stmt, lease(self.gw.config), keep=self._paced)

    def _paced(self, row: OutboxItem) -> bool:
        """Whether ``row`` may go now: a job's progress at most once per ``pace`` from here."""
        if not self.pace or row.payload.get("type") != PROGRESS or not row.job_id:
            return True
        now = time.monotonic()
        last = self._progress_sent.get(row.job_id)
        if last is not None and now - last < self.pace:
            due = last + self.pace
            self._held_until = due if self._held_until is None else min(self._held_until, due)
            return False
        self._progress_sent[row.job_id] = now
        if len(self._progress_sent) > 10_000:  # forget jobs quiet for longer than the pace
            self._progress_sent = {j: t for j, t in self._progress_sent.items() if now - t < self.pace}
        return True

    def send(self, row: OutboxItem) -> Result:
        """One signed POST of the row's message (gateway.forward.request_of: a job's JSON, or a
        provider's delivery as it came) to the endpoint."""
        try:
            body, headers = request_of(self.gw.store, row)
        except GatewayError as exc:  # a delivery's body pruned before it could be sent
            return Result(give_up=True, error=exc.message)
        timeout = (CONNECT_TIMEOUT, float(max(self.gw.config.outbox_timeout, 1)))
        return post_signed(self.endpoint.url, msg_id=row.payload["webhook_id"], body=body, headers=headers,
                           secret=self.endpoint.secrets[0], timeout=timeout)

    def _record(self, rows: list[OutboxItem], results: list[Result]) -> list[str]:
        """Write down the tries in one transaction (gateway.tries.settle), or disable the endpoint
        on ``410 Gone``; each trace line names the endpoint, never its URL. Returns the outcomes
        of the tries that were still ours to record."""
        config = self.gw.config
        name = self.endpoint.name
        now = utcnow()
        done: list[tuple[OutboxItem, Result, dict[str, Any]]] = []
        with self.gw.store.transaction() as w:
            items = still_ours(w, rows)
            # the trace stamps each line with its job's version: read the jobs in one query, held
            # here so the session's (weak) identity map answers those reads
            jobs = list(w.session.scalars(select(Job).where(Job.id.in_({i.job_id for i in items.values() if i.job_id}))))
            for row, result in zip(rows, results, strict=True):
                item = items.get(row.id)
                if item is None:
                    continue  # settled meanwhile, or another process took the lease over
                if result.status == 410:
                    disable_endpoint(w, name, result.error or "410 Gone")
                    item.next_attempt_at, item.last_error = now, result.error  # pending: it goes once enabled again
                    detail: dict[str, Any] = {"try": item.attempts, "status": 410, "duration_ms": result.duration_ms,
                                              "outcome": "disabled", "error": result.error, "enabled": False}
                else:
                    expired = now - item.created_at >= timedelta(seconds=config.forward_retry_for)
                    detail = settle(item, result, config, out_of_tries=expired, dead="dead")
                detail.update(endpoint=name, webhook_id=item.payload["webhook_id"], type=item.payload["type"])
                if item.job_id:
                    w.trace(item.job_id, "forward", detail, at=now)
                done.append((item, result, detail))
            w.finish_changes()
            del jobs
        for item, result, detail in done:
            outcome = str(detail["outcome"])
            if result.ok:
                self.gw.metrics.forward_latency.labels(endpoint=name).observe((now - item.created_at).total_seconds())
            self.gw.metrics.forward_total.labels(endpoint=name, outcome=outcome).inc()
            log.info("forward %s %s", name, outcome,
                     extra={"job_id": item.job_id, "try": detail["try"], "status": result.status, "error": result.error})
            if outcome == "disabled":
                log.warning("forwarding endpoint %s answered 410 Gone and is disabled until an operator enables it", name)
        return [str(d["outcome"]) for _, _, d in done]

    def _release(self, rows: list[OutboxItem]) -> None:
        """Hand back claimed rows not tried (the endpoint was disabled): due again, the claim uncounted."""
        if not rows:
            return
        with self.gw.store.transaction() as w:
            for row in rows:
                w.session.execute(update(OutboxItem).where(OutboxItem.id == row.id, OutboxItem.status == PENDING,
                                                           OutboxItem.attempts == row.attempts)
                                  .values(attempts=row.attempts - 1, next_attempt_at=utcnow()))

    def _wake_when_due(self) -> None:
        """Wake this sender when its next retry or paced progress is due, if that comes before
        the outbox interval would (a commit that owes a message wakes it anyway)."""
        interval = float(max(self.gw.config.outbox_interval, 1))
        due_in: list[float] = []
        if self._held_until is not None:
            due_in.append(self._held_until - time.monotonic())
        now = utcnow()
        with self.gw.store.reading() as session:
            at = session.scalar(select(func.min(OutboxItem.next_attempt_at)).where(self._heads(), OutboxItem.next_attempt_at > now))
        if at is not None:
            due_in.append((at - now).total_seconds())
        delay = max(0.0, min(due_in, default=interval))
        if delay >= interval:
            return
        at_mono = time.monotonic() + delay
        with self._lock:
            if self._timer is not None and self._timer.is_alive() and self._timer_at <= at_mono:
                return  # an earlier wake-up is already set
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = threading.Timer(delay, self.wake.set), at_mono
            self._timer.daemon = True
            self._timer.start()


def install(gw: Services, relay: Relay) -> dict[str, EndpointSender]:
    """One sender loop per endpoint, on the outbox's interval and woken by every committed change
    the relay's bus tells this process about (from any process); the bus listens from start-up."""
    senders = {name: EndpointSender(gw, endpoint) for name, endpoint in gw.config.endpoints.items()}
    for name, sender in senders.items():
        gw.background.every(max(gw.config.outbox_interval, 1), f"forward-{name}", wake=sender.wake)(sender.drain)
    if senders:
        def wake_all() -> None:
            for sender in senders.values():
                sender.wake.set()

        relay.hub.on_notice.append(wake_all)
        gw.background.on_start.append(relay.start)
    return senders
