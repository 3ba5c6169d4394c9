"""Reconciliation: when a job's webhooks go quiet, ask the provider's API where it stands.

Webhooks get lost (a provider's outage, an endpoint down past its retry schedule, a wrong
secret). A source whose adapter describes a status read (``Adapter.status_request``) and whose
``api_key_env`` holds a key is *reconciled*: a job of it still ``queued`` or ``processing`` and
quiet for the source's ``reconcile_after`` seconds (default: half its ``stall_after``) owes a
status read, an outbox row of kind ``reconcile`` (durable, retried with backoff on 429 and 5xx,
honouring ``Retry-After``). What the answer says is recorded as events of kind ``reconcile``
("read from the provider's API") through ``Writer.record_event`` — the one writer path — and
folds like a webhook of the job's (source, external id).

One read per quiet period: the row's key names the job, its attempt and the time its last news
was dated (``updated_at``), so the ask at ``reconcile_after`` and the watchdog's check before
stalling share it. A "still running" answer is dated by the provider's own times (never the
read's), so it does not pass for fresh news: the watchdog then stalls the job at
``stall_after`` — the provider, asked, still said running — and likewise when it could not be
asked (the read gave up, or is backing off after a failed try).

Rate: at most ``reconcile_per_minute`` reads a minute per source and worker process; a 429 or
5xx holds back every pending read of that source until the failed one's next try, so a
struggling provider API sees no storm. Reads asked on demand (``gateway reconcile``,
``POST /api/jobs/<id>/reconcile``) go through the same outbox; a bulk ask after an outage is
spread out when queued. docs/reconciliation.md has what each provider is asked and its cost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from adapters.base import DetailsRequest, ProviderEvent
from gateway.config import SourceConfig
from gateway.errors import Conflict, NotFound
from gateway.ids import utcnow
from gateway.jobjson import iso
from gateway.models import Job, OutboxItem
from gateway.services import Source
from gateway.store import Store, Writer

RECONCILE = "reconcile"  # the outbox kind and the events' kind
READ_FROM = "the provider's API"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
LIVE = ("queued", "processing")
BULK_LIMIT = 10_000
Parse = Callable[[int, bytes], list[ProviderEvent]]


def reconcile_after(sc: SourceConfig) -> int | None:
    """Seconds of quiet before a job of this source is read from the API: the source's
    ``reconcile_after``, else half its ``stall_after``; None: no reads unless asked."""
    if sc.reconcile_after:
        return sc.reconcile_after
    return max(sc.stall_after // 2, 1) if sc.stall_after else None


def unavailable(source: Source, env: Mapping[str, str]) -> str | None:
    """Why this source is not reconciled (shown by ``gateway sources``), or None when it is."""
    why = source.adapter.status_unavailable()
    if why:
        return why
    name = source.config.api_key_env
    if not name:
        return "no api_key_env"
    if not (env.get(name) or "").strip():
        return f"environment variable {name} (api_key_env) is not set"
    return None


def api_key(source: Source, env: Mapping[str, str]) -> str | None:
    """The source's provider API key from the environment; never logged nor traced."""
    name = source.config.api_key_env
    return ((env.get(name) or "").strip() or None) if name else None


def job_key(job: Job) -> tuple[str, str]:
    """The (source, external id) the job's current attempt is driven by: the one to read."""
    key = (job.fold or {}).get("attempt_key")
    return (key[0], key[1]) if key else (job.source, job.external_id)


def quiet_key(job: Job) -> str:
    """The outbox key of the read owed for the job's current quiet period (one per period)."""
    return f"reconcile:{job.id}:{job.attempt}:{int(job.updated_at.timestamp() * 1000)}"


def enqueue(w: Writer, job: Job, *, key: str, by: str, due: datetime | None = None) -> bool:
    """Owe a status read of the job's current attempt in ``w``'s transaction (once per key);
    False when that read is already owed."""
    from gateway.outbox import enqueue_row

    source, external_id = job_key(job)
    payload = {"external_id": external_id, "attempt": job.attempt, "by": by}
    added = enqueue_row(w, kind=RECONCILE, key=key, source=source, job_id=job.id, payload=payload, due=due)
    if added:
        w.trace(job.id, "reconcile_queued", {"source": source, "external_id": external_id, "by": by, "read_from": READ_FROM,
                                              "due": iso(due) if due else None})
    return added


def owed_for_quiet_period(w: Writer, job: Job) -> OutboxItem | None:
    """The read owed (or made) for the job's current quiet period, if any."""
    return w.session.scalars(select(OutboxItem).where(OutboxItem.key == quiet_key(job))).first()


def ask_now(store: Store, job_id: str, *, by: str, sources: Mapping[str, Source], env: Mapping[str, str]) -> OutboxItem:
    """On demand: owe a read of one job now (``gateway reconcile <job>``, the API). Conflict when
    the job is finished or its source cannot be read; NotFound for no such job."""
    with store.transaction() as w:
        job = w.lock_job(job_id)
        _check(job, sources, env)
        key = f"reconcile:{job.id}:{job.attempt}:by:{int(time.time() * 1000)}"
        enqueue(w, job, key=key, by=by)
        item = w.session.scalars(select(OutboxItem).where(OutboxItem.key == key)).one()
    return item


def ask_source(store: Store, source: str, since: datetime, *, by: str, sources: Mapping[str, Source], env: Mapping[str, str],
               per_minute: int) -> list[str]:
    """After an outage: owe a read of every live job of ``source`` updated since ``since``,
    spread ``60 / per_minute`` seconds apart so the provider's API sees a bounded rate. The ids."""
    if source not in sources:
        raise NotFound(f"no source {source!r}", code="source_not_found")
    why = unavailable(sources[source], env)
    if why:
        raise Conflict(f"source {source!r} is not reconciled: {why}", code="not_reconciled")
    with store.reading() as session:
        ids = list(session.scalars(select(Job.id).where(Job.source == source, Job.state.in_(LIVE), Job.updated_at >= since)
                                   .order_by(Job.updated_at, Job.id).limit(BULK_LIMIT)))
    gap = 60.0 / max(per_minute, 1)
    start, stamp = utcnow(), int(time.time() * 1000)
    asked = []
    for n, job_id in enumerate(ids):
        with store.transaction() as w:
            job = w.lock_job(job_id)
            if job.state not in LIVE:
                continue
            enqueue(w, job, key=f"reconcile:{job.id}:{job.attempt}:by:{stamp}", by=by, due=start + timedelta(seconds=n * gap))
        asked.append(job_id)
    return asked


def _check(job: Job, sources: Mapping[str, Source], env: Mapping[str, str]) -> None:
    if job.state not in LIVE:
        raise Conflict(f"the job is {job.state}: nothing to reconcile", code="job_finished")
    source = sources.get(job_key(job)[0])
    why = "its source is not configured" if source is None else unavailable(source, env)
    if why:
        raise Conflict(f"the job's source is not reconciled: {why}", code="not_reconciled")


def status_read(source: Source, payload: Mapping[str, Any], env: Mapping[str, str]) -> tuple[DetailsRequest, Parse] | str:
    """The GET an outbox ``reconcile`` row makes and how its answer is read, or why there is none."""
    why = unavailable(source, env)
    if why:
        return f"not reconciled: {why}"
    external_id = str(payload.get("external_id") or "")
    request = source.adapter.status_request(external_id, api_key(source, env))
    if request is None:
        return "the adapter describes no status read for this id"
    return request, lambda status, body: source.adapter.parse_status(external_id, status, body, utcnow())


def hold_source(w: Writer, source: str, until: datetime, except_id: int, error: str | None) -> None:
    """A read of ``source`` failed (429, 5xx, no answer): no other pending read of it before
    ``until``. Each keeps why as its last error, so the watchdog knows it cannot be asked now."""
    w.session.execute(
        update(OutboxItem)
        .where(OutboxItem.kind == RECONCILE, OutboxItem.source == source, OutboxItem.status == PENDING,
               OutboxItem.next_attempt_at < until, OutboxItem.id != except_id)
        .values(next_attempt_at=until, last_error=f"held back: another read failed ({error or 'no answer'})"[:500])
    )


class Budget:
    """Reads allowed per source per minute in this process (a sliding window)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = max(per_minute, 1)
        self.clock = clock
        self._tries: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, source: str) -> float:
        """0 when a read of ``source`` may go now (and counts it), else seconds to wait."""
        with self._lock:
            now = self.clock()
            tries = self._tries.setdefault(source, deque())
            while tries and tries[0] <= now - 60:
                tries.popleft()
            if len(tries) >= self.per_minute:
                return max(tries[0] + 60 - now, 0.5)
            tries.append(now)
            return 0.0


def describe(sources: Sequence[Source], env: Mapping[str, str]) -> dict[str, str]:
    """Per source, how it is reconciled (``after N s``, ``on demand only``) or why not."""
    out = {}
    for source in sources:
        why = unavailable(source, env)
        after = reconcile_after(source.config)
        out[source.name] = f"no: {why}" if why else (f"after {after} s quiet" if after else "on demand only")
    return out
