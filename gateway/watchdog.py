"""The stall watchdog: no tab waits forever on a provider that never calls back.

A source may set ``stall_after`` (seconds). A job of that source still ``queued`` or
``processing`` whose last applied event (``updated_at``: the provider's or worker's own event
time, or the registration or retry time) is older than that becomes ``failed`` with
``error.code = "stalled"`` and ``retryable: true``. The failure is recorded as a ``watchdog``
event at the gateway's now, through the one writer path, so it is in the trace and reaches
every watcher like any other change. It is a presumption (rule 6 in ``gateway.states``): a
newer real event of the same attempt resumes that attempt; an older one is kept in the trace
as stale, by the ordering rules.

Every worker process runs the check every ``watchdog_interval`` seconds; the event id names the
job, its attempt and the quiet period observed, so two processes stalling the same job record
one event.

Reconciled sources (gateway/reconcile.py): a job quiet for ``reconcile_after`` owes a status
read of the provider's API first, and one quiet past ``stall_after`` is stalled only once that
read was made and the provider still said running, or it could not be made (it gave up, or a
try failed and it is backing off). A job that reaches ``stall_after`` never asked is asked
first. The stall's trace line says which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import exists, select

from adapters.base import ProviderEvent
from gateway import reconcile
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import Job, OutboxItem
from gateway.services import Services
from gateway.states import Decision, Kind, State
from gateway.store import GATEWAY_SOURCE

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("gateway.watchdog")

STALLED = "stalled"
LIVE = (State.QUEUED.value, State.PROCESSING.value)
BATCH = 500


class Watchdog:
    """Finds jobs that went quiet for longer than their source's ``stall_after`` and fails them."""

    def __init__(self, gw: Services, wake: Callable[[], None] | None = None):
        self.gw = gw
        self.wake = wake  # the outbox dispatcher's, so a read owed goes out at once

    def run_once(self, now: datetime | None = None) -> list[str]:
        """Ask the provider about jobs quiet past ``reconcile_after``, then stall every overdue
        job; the ids of the jobs this call failed."""
        now = now or utcnow()
        stalled: list[str] = []
        for name, source in self.gw.sources.items():
            reconciled = reconcile.unavailable(source, self.gw.config.env) is None
            asks = reconcile.reconcile_after(source.config) if reconciled else None
            if asks:
                for job_id in self._quiet(name, now - timedelta(seconds=asks), unasked=True):
                    self._ask(job_id, now - timedelta(seconds=asks))
            after = source.config.stall_after
            if not after:
                continue
            stalled.extend(job_id for job_id in self._quiet(name, now - timedelta(seconds=after)) if self._stall(job_id, after, now, reconciled))
        return stalled

    def _quiet(self, source: str, cutoff: datetime, *, unasked: bool = False) -> list[str]:
        """Live jobs of ``source`` with no news since ``cutoff``, oldest first; ``unasked``: only
        those not read from the API since their last news (the others must not crowd them out)."""
        stmt = select(Job.id).where(Job.source == source, Job.state.in_(LIVE), Job.updated_at <= cutoff)
        if unasked:
            stmt = stmt.where(~exists().where(OutboxItem.job_id == Job.id, OutboxItem.kind == reconcile.RECONCILE,
                                              OutboxItem.created_at >= Job.updated_at))
        with self.gw.store.reading() as session:
            return list(session.scalars(stmt.order_by(Job.updated_at).limit(BATCH)))

    def _ask(self, job_id: str, cutoff: datetime) -> None:
        """Owe one status read for the job's current quiet period (a no-op once owed)."""
        with self.gw.store.transaction() as w:
            job = w.lock_job(job_id)
            if job.state in LIVE and job.updated_at <= cutoff and reconcile.enqueue(w, job, key=reconcile.quiet_key(job), by="watchdog") and self.wake:
                w.after_commit(self.wake)

    def _stall(self, job_id: str, after: int, now: datetime, reconciled: bool = False) -> bool:
        """Fail one job if, under its lock, it is still live and still quiet, and (reconciled
        sources) the provider was asked about this quiet period, or could not be."""
        with self.gw.store.transaction() as w:
            job = w.lock_job(job_id)
            quiet_since = job.updated_at
            if job.state not in LIVE or quiet_since > now - timedelta(seconds=after):
                return False  # news arrived meanwhile, or another process stalled it
            provider = "not reconciled"
            if reconciled:
                read = reconcile.owed_for_quiet_period(w, job)
                if read is None:  # never asked (reconcile_after >= stall_after, or a gateway that was down): ask first
                    if reconcile.enqueue(w, job, key=reconcile.quiet_key(job), by="watchdog") and self.wake:
                        w.after_commit(self.wake)
                    return False
                if read.status == reconcile.PENDING and read.attempts == 0 and not read.last_error:
                    return False  # asked, not tried yet (its turn in the source's budget is coming)
                provider = ("asked: still running" if read.status == reconcile.DELIVERED
                            else f"could not be asked ({(read.last_error or read.status)[:200]})")
            stamp = int(quiet_since.timestamp() * 1000)
            pe = ProviderEvent(
                event_id=f"stall:{job.id}:{job.attempt}:{stamp}",
                external_id=job.external_id,
                occurred_at=now,
                state=State.FAILED,
                type="watchdog.stalled",
                error={"code": STALLED, "message": f"No news from the job for {after} s; it is presumed stalled.", "retryable": True},
            )
            outcome = w.record_event(GATEWAY_SOURCE, pe, kind=Kind.WATCHDOG, job_id=job.id)
            if outcome.decision is not Decision.APPLIED:
                return False
            w.trace(job.id, STALLED, {"stall_after": after, "quiet_since": iso(quiet_since), "attempt": job.attempt, "was": outcome.state_before,
                                      "provider": provider}, at=now)
        self.gw.metrics.stalls.labels(source=job.source).inc()
        log.info("job stalled", extra={"job_id": job_id, "stall_after": after})
        return True


def init_app(app: Flask, gw: Services, wake: Callable[[], None] | None = None) -> Watchdog:
    """The app's watchdog, run as a background task when any source sets ``stall_after`` or
    ``reconcile_after``; ``wake`` wakes the outbox dispatcher after a status read is owed."""
    watchdog = Watchdog(gw, wake)
    if any(s.config.stall_after or s.config.reconcile_after for s in gw.sources.values()):
        gw.background.every(max(gw.config.watchdog_interval, 1), "watchdog")(watchdog.run_once)
    return watchdog
