"""The outbox: outbound HTTP calls the gateway owes, kept in the database until they succeed.

A row is written in the same transaction as the change that owes it (a retry owes the
integrator a callback; a thin webhook owes a details fetch), so a call is never lost and never
made for a change that rolled back. Any worker process claims due rows — PostgreSQL with
``FOR UPDATE SKIP LOCKED``, SQLite through ``BEGIN IMMEDIATE``, which serializes claimers — and
leases them by pushing ``next_attempt_at`` past the call's worst-case duration, so a process
that dies mid-call leaves the row to another one after the lease. The HTTP call runs outside
any transaction; its result is recorded in a new one, with a line in the job's trace for every
try (claim, sign, record and schedule are gateway/tries.py, shared with the forwarding
senders). Failed tries are retried with exponential backoff and equal jitter (``outbox_backoff``
seconds doubling to ``outbox_backoff_max``, a ``Retry-After`` header is honoured) until a 2xx
or ``outbox_max_attempts``, after which the row is ``dead`` and the trace says so; ``410 Gone``
gives up at once (Standard Webhooks: the endpoint is disabled). Delivery is at least once: a
process killed between the receiver's 2xx and the commit sends again, with the same
``webhook-id``, which receivers deduplicate on.

Kinds:

- ``callback``: a Standard Webhooks–signed POST of ``{"type": "job.retry_requested",
  "timestamp": …, "data": <job JSON>}`` to the source's ``callback_url``. The secret is the
  environment variable named by the source's ``callback_secret_env`` (never one of its webhook
  secrets), else one derived from its first webhook secret (``derive_callback_secret``); either
  way a ``whsec_…`` Standard Webhooks secret. The
  ``webhook-id`` is the row's key (``msg_retry_<job>_<attempt>``), the same on every try.
- ``details``: for adapters whose webhooks are too thin to know the state
  (``ProviderEvent.needs_details``): the GET that ``Adapter.details_request`` describes, with
  the source's API key from ``api_key_env``; what ``Adapter.parse_details`` returns is
  recorded through ``Writer.record_event``. 429 and 5xx are retried; any other answer goes to
  the adapter, and an answer it cannot read gives up.
- ``reconcile``: a status read for a quiet job (gateway/reconcile.py): the GET that
  ``Adapter.status_request`` describes, performed like a details fetch; what
  ``Adapter.parse_status`` returns is recorded through ``Writer.record_event`` as events of kind
  ``reconcile`` for the row's job. Reads are budgeted per source (``reconcile_per_minute``), and
  a 429 or 5xx holds back the source's other pending reads until the failed one's next try.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
from sqlalchemy import delete, select

from adapters.base import DetailsRequest, ProviderEvent
from gateway import reconcile
from gateway.callback_secret import CALLBACK_SECRET_LABEL as CALLBACK_SECRET_LABEL
from gateway.callback_secret import callback_secret, check_callback_secrets
from gateway.callback_secret import derive_callback_secret as derive_callback_secret
from gateway.errors import Conflict, GatewayError, NotFound
from gateway.forward import install as install_forwarding
from gateway.ids import utcnow
from gateway.jobjson import iso, job_json
from gateway.models import Job, OutboxItem
from gateway.owed import COALESCED, DEAD, DELIVERED, FORWARD, PENDING, enqueue_row
from gateway.services import Services
from gateway.states import Kind, State
from gateway.store import Store, Writer
from gateway.tries import USER_AGENT as USER_AGENT  # re-exported: the shared try machinery lives in gateway.tries
from gateway.tries import Result as Result
from gateway.tries import backoff as backoff
from gateway.tries import claim, compact_json, lease, post_signed, recording, settle
from gateway.tries import retry_after as _retry_after

if TYPE_CHECKING:
    from flask import Flask


log = logging.getLogger("gateway.outbox")

CALLBACK = "callback"
DETAILS = "details"
RECONCILE = reconcile.RECONCILE
RETRY_REQUESTED = "job.retry_requested"
MAX_DETAILS_BYTES = 1024 * 1024


def redact_url(url: str | None) -> str | None:
    """The URL without credentials or query string, fit for logs and the trace."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def event_to_json(pe: ProviderEvent) -> dict[str, Any]:
    """A ProviderEvent as JSON, to wait in an outbox row."""
    return {
        "event_id": pe.event_id, "external_id": pe.external_id, "occurred_at": pe.occurred_at.isoformat(),
        "state": pe.state.value if pe.state else None, "type": pe.type, "progress": pe.progress, "queue": pe.queue,
        "error": pe.error, "result": pe.result, "label": pe.label, "needs_details": pe.needs_details,
    }


def event_from_json(data: Mapping[str, Any]) -> ProviderEvent:
    """The ProviderEvent that ``event_to_json`` stored."""
    return ProviderEvent(
        event_id=data["event_id"], external_id=data["external_id"], occurred_at=datetime.fromisoformat(data["occurred_at"]),
        state=State(data["state"]) if data.get("state") else None, type=data.get("type") or "", progress=data.get("progress"),
        queue=data.get("queue"), error=data.get("error"), result=data.get("result"), label=data.get("label"),
        needs_details=bool(data.get("needs_details")),
    )


class Outbox:
    """Enqueues outbound calls inside writers' transactions and delivers them in the background."""

    def __init__(self, gw: Services, *, batch: int = 20):
        self.gw = gw
        self.batch = batch
        self.wake = threading.Event()  # set after a commit that enqueued: this process sends at once
        self.budget = reconcile.Budget(gw.config.reconcile_per_minute)

    @property
    def lease(self) -> timedelta:
        """How long a claimed row stays out of other claimers' reach: longer than any one call."""
        return lease(self.gw.config)

    # -- enqueue (inside the caller's transaction) ----------------------------------------------

    def enqueue(self, w: Writer, *, kind: str, key: str, source: str, job_id: str | None, payload: dict[str, Any], target: str | None = None) -> bool:
        """Add a row in ``w``'s transaction (once per key); the dispatcher wakes after the commit."""
        inserted = enqueue_row(w, kind=kind, key=key, source=source, job_id=job_id, payload=payload, target=target)
        if inserted and kind != FORWARD:  # forwarded messages wake their endpoint's senders (gateway.forward_send)
            w.after_commit(self.wake.set)
        return inserted

    def enqueue_callback(self, w: Writer, job: Job) -> bool:
        """Owe the integrator a signed ``job.retry_requested`` callback, if the job's source has a callback_url."""
        source = self.gw.sources.get(job.source)
        url = source.config.callback_url if source is not None else None
        if not url:
            return False
        w.finish_changes()  # the job JSON in the callback carries the version watchers see
        now = utcnow()
        key = f"msg_retry_{job.id}_{job.attempt}"
        payload = {"type": RETRY_REQUESTED, "timestamp": iso(now), "data": job_json(job)}
        if self.enqueue(w, kind=CALLBACK, key=key, source=job.source, job_id=job.id, payload=payload, target=url):
            w.trace(job.id, "callback_queued", {"webhook_id": key, "url": redact_url(url), "attempt": job.attempt}, at=now)
            return True
        return False

    def enqueue_details(self, w: Writer, source: str, pe: ProviderEvent, job_id: str | None) -> bool:
        """Owe a details fetch for a thin event (``needs_details``)."""
        key = f"details:{source}:{pe.event_id}"
        if len(key) > 255:
            key = f"details:{source}:sha256:{hashlib.sha256(pe.event_id.encode()).hexdigest()}"
        added = self.enqueue(w, kind=DETAILS, key=key, source=source, job_id=job_id, payload={"event": event_to_json(pe)})
        if added and job_id:
            w.trace(job_id, "details_queued", {"source": source, "event_id": pe.event_id})
        return added

    # -- dispatch (background, outside any transaction during HTTP) ---------------------------------

    def run_once(self) -> int:
        """Claim the due rows (up to one batch) and try each once; how many were tried."""
        rows = self._claim()
        held: dict[str, datetime] = {}  # sources whose API failed a read in this batch: until when
        for row in rows:
            if row.kind == RECONCILE:
                wait = (held[row.source] - utcnow()).total_seconds() if row.source in held else self.budget.take(row.source)
                if wait > 0:  # held back, or over the source's reads a minute: no try spent
                    self._defer(row, wait, "held back: another read of the source failed" if row.source in held else None)
                    continue
            try:
                result = self._try(row)
            except Exception as exc:  # one broken row must not stop the others
                log.exception("outbox try failed", extra={"job_id": row.job_id, "kind": row.kind})
                result = Result(error=f"internal error ({type(exc).__name__})")
            until = self._record(row, result)
            if row.kind == RECONCILE and until is not None:
                held[row.source] = until
        return len(rows)

    def drain(self) -> int:
        """Run until no due row is left (a sweep may find more than one batch)."""
        total = 0
        while (n := self.run_once()) > 0:
            total += n
            if n < self.batch:
                break
        return total

    def _claim(self) -> list[OutboxItem]:
        """Lease the due rows of the sources this process knows. A row of a source it does not
        know (another instance's newer configuration, mid-deploy) is left for one that does."""
        now = utcnow()
        known = sorted(self.gw.sources)
        if not known:
            return []
        stmt = (
            select(OutboxItem)
            .where(OutboxItem.status == PENDING, OutboxItem.next_attempt_at <= now, OutboxItem.source.in_(known),
                   OutboxItem.kind != FORWARD)  # forwarded messages have their own senders (gateway.forward_send)
            .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
            .limit(self.batch)
        )
        return claim(self.gw.store, stmt, self.lease)

    def _try(self, row: OutboxItem) -> Result:
        if row.kind == CALLBACK:
            return self._send_callback(row)
        if row.kind == DETAILS:
            return self._fetch_details(row)
        if row.kind == RECONCILE:
            return self._read_status(row)
        return Result(give_up=True, error=f"unknown outbox kind {row.kind!r}")

    def _timeouts(self) -> tuple[float, float]:
        t = float(max(self.gw.config.outbox_timeout, 1))
        return (min(t, 5.0), t)

    def _send_callback(self, row: OutboxItem) -> Result:
        source = self.gw.sources.get(row.source)
        if source is None or not row.target:
            return Result(give_up=True, error="the source or its callback_url is no longer configured")
        secret = callback_secret(source.config, self.gw.config.env)
        if not secret:
            return Result(give_up=True, error="no callback secret configured")
        return post_signed(row.target, msg_id=row.key, body=compact_json(row.payload), secret=secret, timeout=self._timeouts())

    def _fetch_details(self, row: OutboxItem) -> Result:
        source = self.gw.sources.get(row.source)
        if source is None:
            return Result(give_up=True, error="the source is no longer configured")
        pe = event_from_json(row.payload["event"])
        request = source.adapter.details_request(pe, reconcile.api_key(source, self.gw.config.env))
        if request is None:
            return Result(ok=True)
        return self._get(row, request, lambda status, body: source.adapter.parse_details(pe, status, body))

    def _read_status(self, row: OutboxItem) -> Result:
        source = self.gw.sources.get(row.source)
        if source is None:
            return Result(give_up=True, error="the source is no longer configured")
        read = reconcile.status_read(source, row.payload, self.gw.config.env)
        return Result(give_up=True, error=read) if isinstance(read, str) else self._get(row, *read)

    def _get(self, row: OutboxItem, request: DetailsRequest, parse: reconcile.Parse) -> Result:
        """Perform an adapter's GET (details fetch or status read) and hand the answer to ``parse``."""
        try:
            with requests.get(request.url, headers=dict(request.headers), timeout=self._timeouts(), allow_redirects=False, stream=True) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    return Result(status=status, error=f"HTTP {status}", retry_after=_retry_after(response.headers.get("Retry-After")))
                body = _read_limited(response, MAX_DETAILS_BYTES)
        except requests.RequestException as exc:
            return Result(error=f"{type(exc).__name__}")
        if body is None:
            return Result(status=status, give_up=True, error=f"response over {MAX_DETAILS_BYTES} bytes")
        try:
            events = parse(status, body)
        except GatewayError as exc:
            return Result(status=status, give_up=True, error=exc.message[:300])
        except Exception as exc:  # an adapter bug: give up on this row, keep the reason
            log.exception("adapter %s parse raised an undeclared error", row.kind, extra={"source": row.source})
            return Result(status=status, give_up=True, error=f"adapter error ({type(exc).__name__})")
        return Result(ok=True, status=status, events=list(events))

    def _defer(self, row: OutboxItem, wait: float, why: str | None = None) -> None:
        """Put a claimed row back, untried, due in ``wait`` seconds (its claim not counted as a try)."""
        with self.gw.store.transaction() as w:
            item = w.session.scalars(select(OutboxItem).where(OutboxItem.id == row.id).with_for_update()).first()
            if item is not None and item.status == PENDING and item.attempts == row.attempts:
                item.attempts -= 1
                item.next_attempt_at = utcnow() + timedelta(seconds=wait)
                item.last_error = why or item.last_error

    def _record(self, row: OutboxItem, result: Result) -> datetime | None:
        """Write down one try in a new transaction: delivered, rescheduled or given up, and the
        trace line. When the row is retried, its next try's time."""
        now = utcnow()
        with recording(self.gw.store, row) as held:
            if held is None:
                return None  # settled meanwhile, or our lease ran out and another process claimed it: its word wins
            w, item = held
            recorded: list[tuple[str | None, dict[str, Any]]] = []
            if result.ok:
                for pe in result.events:
                    if item.kind == RECONCILE:  # read from the provider's API, for this row's job
                        outcome = w.record_event(item.source, pe, kind=Kind.RECONCILE, job_id=item.job_id, received_at=now)
                    else:
                        outcome = w.record_event(item.source, pe, received_at=now)
                    w.finish_changes()
                    recorded.append((outcome.job_id, {"event_id": pe.event_id, "state": pe.state.value if pe.state else None, "decision": outcome.decision.value}))
            detail = settle(item, result, self.gw.config, out_of_tries=item.attempts >= self.gw.config.outbox_max_attempts)
            if item.kind == RECONCILE and detail["outcome"] == "retry":  # 429, 5xx or no answer: the source's other reads wait as long
                reconcile.hold_source(w, item.source, item.next_attempt_at, item.id, result.error)
            if item.kind == CALLBACK:
                detail.update(webhook_id=item.key, url=redact_url(item.target))
            else:
                detail["events"] = [r for _, r in recorded]
            if item.kind == RECONCILE:
                detail["read_from"] = reconcile.READ_FROM
            job_ids = {item.job_id} | {j for j, _ in recorded}
            for job_id in sorted(j for j in job_ids if j):
                w.trace(job_id, item.kind, detail, at=now)
        self.gw.metrics.outbox_tries.labels(kind=item.kind, outcome=detail["outcome"]).inc()
        log.info(
            "outbox %s %s", item.kind, detail["outcome"],
            extra={"job_id": item.job_id, "kind": item.kind, "try": detail["try"], "status": result.status, "error": result.error},
        )
        return item.next_attempt_at if detail["outcome"] == "retry" else None


def _read_limited(response: requests.Response, limit: int) -> bytes | None:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def owed(store: Store, *, include_dead: bool = True, limit: int = 100) -> list[OutboxItem]:
    """Rows not delivered yet (and given-up ones), oldest first: what an operator looks at."""
    statuses = [PENDING, DEAD] if include_dead else [PENDING]
    with store.reading() as session:
        return list(session.scalars(select(OutboxItem).where(OutboxItem.status.in_(statuses)).order_by(OutboxItem.id).limit(limit)))


def requeue(store: Store, row_id: int, *, by: str) -> OutboxItem:
    """Give a dead row a fresh set of tries, due now (after the receiver was fixed); traced."""
    with store.transaction() as w:
        item = w.session.scalars(select(OutboxItem).where(OutboxItem.id == row_id).with_for_update()).first()
        if item is None:
            raise NotFound(f"no outbox row {row_id}", code="outbox_row_not_found")
        if item.status != DEAD:
            raise Conflict(f"outbox row {row_id} is {item.status}; only a dead row is requeued", code="not_dead")
        item.status, item.attempts, item.next_attempt_at = PENDING, 0, utcnow()
        if item.job_id:
            w.trace(item.job_id, f"{item.kind}_requeued", {"by": by, "row": item.id, "last_error": item.last_error})
    return item


def purge(store: Store, before: datetime) -> int:
    """Delete rows settled (delivered or given up) before ``before``; the trace keeps their story."""
    with store.transaction() as w:
        result = w.session.execute(
            delete(OutboxItem).where(OutboxItem.status.in_([DELIVERED, DEAD, COALESCED]), OutboxItem.created_at < before)
        )
    return int(getattr(result, "rowcount", 0) or 0)  # a DELETE's CursorResult


def init_app(app: Flask, gw: Services) -> Outbox:
    """The app's outbox with its background dispatcher; a source's unusable callback secret stops start-up."""
    check_callback_secrets(gw)
    outbox = Outbox(gw)
    install_forwarding(gw, outbox.enqueue)
    gw.background.every(max(gw.config.outbox_interval, 1), "outbox", wake=outbox.wake)(outbox.drain)
    if gw.config.retention_days:
        keep = timedelta(days=gw.config.retention_days)
        gw.background.every(3600, "outbox-purge")(lambda: purge(gw.store, utcnow() - keep))
    return outbox
