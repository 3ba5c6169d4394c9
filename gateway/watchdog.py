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
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from adapters.base import ProviderEvent
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import Job
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

    def __init__(self, gw: Services):
        self.gw = gw

    def run_once(self, now: datetime | None = None) -> list[str]:
        """Stall every overdue job; the ids of the jobs this call failed."""
        now = now or utcnow()
        stalled: list[str] = []
        for name, source in self.gw.sources.items():
            after = source.config.stall_after
            if not after:
                continue
            cutoff = now - timedelta(seconds=after)
            with self.gw.store.reading() as session:
                ids = session.scalars(
                    select(Job.id).where(Job.source == name, Job.state.in_(LIVE), Job.updated_at <= cutoff).order_by(Job.updated_at).limit(BATCH)
                ).all()
            stalled.extend(job_id for job_id in ids if self._stall(job_id, after, now))
        return stalled

    def _stall(self, job_id: str, after: int, now: datetime) -> bool:
        """Fail one job if, under its lock, it is still live and still quiet."""
        with self.gw.store.transaction() as w:
            job = w.lock_job(job_id)
            quiet_since = job.updated_at
            if job.state not in LIVE or quiet_since > now - timedelta(seconds=after):
                return False  # news arrived meanwhile, or another process stalled it
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
            w.trace(job.id, STALLED, {"stall_after": after, "quiet_since": iso(quiet_since), "attempt": job.attempt, "was": outcome.state_before}, at=now)
        self.gw.metrics.stalls.labels(source=job.source).inc()
        log.info("job stalled", extra={"job_id": job_id, "stall_after": after})
        return True


def init_app(app: Flask, gw: Services) -> Watchdog:
    """The app's watchdog, run as a background task when any source sets ``stall_after``."""
    watchdog = Watchdog(gw)
    if any(s.config.stall_after for s in gw.sources.values()):
        gw.background.every(max(gw.config.watchdog_interval, 1), "watchdog")(watchdog.run_once)
    return watchdog
