"""Queues (CONTRACT §1): which writers take a queue's lock, when positions are recomputed, and
the rule the PostgreSQL fast path mirrors — it takes only jobs that neither are nor become queued.

A job's queue is the one its latest applied ``queued`` event names, else its registration's;
positions count the queued jobs of a queue in the order they entered it, unless the provider
reports its own. Writers that may move a job into, out of or within a queue take that queue's
lock before the job's row, so recomputations never interleave and locks are taken in one order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from gateway.errors import NotFound
from gateway.models import Job
from gateway.states import JobView, Link, State
from gateway.store import fastpath
from gateway.store import statements as sql
from gateway.store.rows import job_columns, queue_name_of
from gateway.store.unit import Unit

_QUEUE_OF_JOB = select(Job.queue_name, Job.state).where(Job.id == bindparam("job_id"))
_LOCK_JOB = sql.locking(select(Job).where(Job.id == bindparam("job_id"))).execution_options(populate_existing=True)


def takes_queue_lock(state: str, *, may_queue: bool) -> bool:
    """Whether a writer changing a job in ``state`` takes its queue's lock first: the job is in
    a queue state (statements.QUEUE_STATES), or the event may put it in a queue. The fast path's
    first script asks the same in SQL (statements.lock_queue_if_needed)."""
    return may_queue or state in sql.QUEUE_STATES


def may_move_a_queue(state_before: str, state_after: State) -> bool:
    """Whether a change can move any queue's positions: the job was or is queued. When it is
    False no recomputation is needed, which is what lets the fast path write the job alone."""
    return state_before == State.QUEUED.value or state_after is State.QUEUED


class Queues(Unit):
    """Row and queue locks, and queue positions, for the writer."""

    def _store_view(self, job: Job, view: JobView, links: list[Link]) -> None:
        """Write a new view into the job's row; recompute the positions of the queues it moved."""
        self._touch(job)
        state_before, since, left = job.state, job.queued_since, job.queue_name
        was_queued = state_before == State.QUEUED.value
        now_queued = view.state is State.QUEUED
        if now_queued:
            # CONTRACT §1: the queue its latest applied `queued` event names, else its registration's
            job.queue_name = queue_name_of(view.queue) or job.registered_queue or job.queue_name
            if job.queue_name != left and self.postgres:
                self._queue_lock(job.queue_name)
        for key, value in job_columns(job, view, links).items():
            setattr(job, key, value)
        moved = job.queue_name != left
        if moved and job.queue:
            job.queue = {**job.queue, "position": (view.queue or {}).get("position"), "total": (view.queue or {}).get("total")}
        if not may_move_a_queue(state_before, view.state):
            return
        if moved or was_queued != now_queued or (now_queued and (since != view.queued_since or (job.queue or {}).get("position") is None)):
            self.session.flush()
            self._recompute_queue(job.queue_name)
            if moved:
                self._recompute_queue(left)  # the queue it left: the jobs behind it move up

    def _recompute_queue(self, queue_name: str) -> None:
        """Positions among the queued jobs of one queue, in the order they entered it."""
        rows = self.session.scalars(
            select(Job).where(Job.queue_name == queue_name, Job.state == State.QUEUED.value).order_by(Job.queued_since, Job.id)
        ).all()
        total = len(rows)
        for position, job in enumerate(rows, start=1):
            reported = (job.fold or {}).get("queue") or {}
            shown = dict(job.queue or {})
            new_pos = reported.get("position") if reported.get("position") is not None else position
            new_total = reported.get("total") if reported.get("total") is not None else total
            if shown.get("position") != new_pos or shown.get("total") is None:
                self._touch(job)
                shown.update(position=new_pos, total=new_total, name=shown.get("name") or reported.get("name") or queue_name)
                job.queue = shown

    def lock_batch(self, keys: list[tuple[str, str, bool]]) -> None:
        """Before a group commit's webhooks run (batch.py): every lock they will take, in the one
        order (statements.LOCK_BATCH_QUEUES); keys are (source, external_id, the event may leave
        the job in a queue state). PostgreSQL only: SQLite's BEGIN IMMEDIATE already lets one writer in at a time."""
        if self.postgres and keys:
            with fastpath.driver_errors(self.conn):
                fastpath.lock_batch(self.fast(), keys)

    def lock_job(self, job_id: str) -> Job:
        """The job, locked for this transaction; NotFound if there is none."""
        self._catch_up()
        return self._lock_job(job_id, queue_lock=False)

    def _lock_job(self, job_id: str, *, queue_lock: bool, seen: Any = None) -> Job:
        """The job's row, locked for this transaction. Writers that may move a job into or out
        of a queue first take that queue's lock, so position recomputation never interleaves.

        ``seen``: the job's (queue_name, state) as read earlier in this transaction, if any."""
        locked: str | None = None
        if self.postgres:
            row = seen if seen is not None else self.session.execute(_QUEUE_OF_JOB, {"job_id": job_id}).first()
            if row is not None and takes_queue_lock(row.state, may_queue=queue_lock):
                locked = self._queue_lock(row.queue_name)
        job = self.session.scalars(_LOCK_JOB, {"job_id": job_id}).first()
        if job is None:
            raise NotFound("no such job", code="job_not_found")
        self._held[job.id] = job
        if self.postgres and locked != job.queue_name and takes_queue_lock(job.state, may_queue=False):
            # the job entered a queue between the unlocked read and the row lock: take that
            # queue's lock now (a deadlock this may cause is detected and retried by Store.write)
            self._queue_lock(job.queue_name)
        return job

    def _queue_lock(self, queue_name: str) -> str:
        self.session.execute(sql.LOCK_QUEUE, {"queue_name": queue_name})
        return queue_name
