"""A provider under load, a process killer, and the ledger check: what was acknowledged is stored.

Used by the crash and outage tests (bounded, in CI) and by ``bench/trust.py`` (long runs).
A delivery is *acknowledged* when the gateway answered 2xx; anything else (an error status, a
reset connection, a timeout) is not, and like a real provider we deliver it again later until
it is. The check then reads the database directly: every acknowledged event id is stored
exactly once, and every job's stored state equals the fold of its stored events.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import func, select

from gateway import states
from gateway.db import make_engine
from gateway.models import Event, Job, JobKey
from gateway.store import event_of
from tests.signing import STANDARD_SECRET, standard_headers

LIFECYCLES = (
    ("queued", "processing", "complete"),
    ("queued", "processing", "failed"),
    ("processing", "complete"),
    ("queued", "failed", "processing", "complete"),  # a provider's own re-run after a failure
)


@dataclass(frozen=True)
class Delivery:
    """One provider event: its id, the job it is about, and the body to sign."""

    event_id: str
    external_id: str
    body: str


def make_deliveries(jobs: int, seed: int = 0, prefix: str = "") -> list[Delivery]:
    """Unique standard-webhook events for ``jobs`` jobs, in a shuffled order (providers do not keep order)."""
    rng = random.Random(seed)
    base = datetime.now(UTC).replace(microsecond=0)
    run = prefix or uuid.uuid4().hex[:8]
    out = []
    for j in range(jobs):
        ext = f"load-{run}-{j}"
        for i, state in enumerate(rng.choice(LIFECYCLES)):
            at = base + timedelta(milliseconds=10 * i + rng.randint(0, 5))
            fields: dict[str, Any] = {"external_id": ext, "state": state, "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"}
            if state == "processing":
                fields["progress"] = {"current": rng.randint(0, 99), "total": 100, "step": "working"}
            elif state == "failed":
                fields["error"] = {"code": "boom", "message": "it broke", "retryable": True}
            elif state == "complete":
                fields["result"] = {"url": f"https://example.com/{ext}"}
            out.append(Delivery(f"msg_{run}_{j}_{i}", ext, json.dumps(fields)))
    rng.shuffle(out)
    return out


@dataclass
class Ledger:
    """The client side's count: what was sent, what the gateway acknowledged, what it answered."""

    sent: int = 0
    acked: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # connection-level failures by exception name
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, delivery: Delivery, status: int | None, error: str | None = None) -> bool:
        with self.lock:
            self.sent += 1
            if status is not None:
                self.statuses[status] += 1
            if error:
                self.errors[error] += 1
            if status is not None and 200 <= status < 300:
                self.acked.add(delivery.event_id)
                return True
            return False


def post(session: requests.Session, url: str, d: Delivery, secret: str = STANDARD_SECRET, timeout: float = 10) -> requests.Response:
    """Sign at send time (a fresh timestamp, like a provider's retry) and POST."""
    return session.post(url, data=d.body, headers=standard_headers(secret, d.body, msg_id=d.event_id), timeout=timeout)


def send_all(
    url: str,
    deliveries: Sequence[Delivery],
    ledger: Ledger,
    *,
    threads: int = 6,
    deadline: float | None = None,
    on_response: Callable[[Delivery, requests.Response], None] | None = None,
) -> list[Delivery]:
    """Deliver each once from ``threads`` concurrent clients; return those not acknowledged."""
    pending = list(deliveries)
    lock = threading.Lock()
    failed: list[Delivery] = []

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not pending or (deadline and time.monotonic() > deadline):
                    return
                d = pending.pop()
            try:
                r = post(session, url, d)
            except requests.RequestException as exc:
                ledger.record(d, None, type(exc).__name__)
                session = requests.Session()  # the connection died with its worker
                ok = False
            else:
                ok = ledger.record(d, r.status_code)
                if on_response:
                    on_response(d, r)
            if not ok:
                with lock:
                    failed.append(d)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return failed + pending


def redeliver(url: str, deliveries: Sequence[Delivery], ledger: Ledger, *, deadline: float, pause: float = 0.2) -> list[Delivery]:
    """The provider's retries: deliver again until each is acknowledged or the deadline passes."""
    left = list(deliveries)
    while left and time.monotonic() < deadline:
        left = send_all(url, left, ledger, threads=4, deadline=deadline)
        if left:
            time.sleep(pause)
    return left


class Killer(threading.Thread):
    """SIGKILLs a random worker of a gunicorn master every ``interval`` (jittered), ``times`` times."""

    def __init__(self, worker_pids: Callable[[], list[int]], times: int, interval: float = 0.5, seed: int = 0):
        super().__init__(daemon=True)
        self.worker_pids, self.times, self.interval = worker_pids, times, interval
        self.rng = random.Random(seed)
        self.killed: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while len(self.killed) < self.times and not self.stop_event.wait(self.interval * self.rng.uniform(0.5, 1.5)):
            pids = [p for p in self.worker_pids() if p not in self.killed]
            if pids:
                pid = self.rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                except ProcessLookupError:
                    pass


@dataclass
class Audit:
    """What the database holds against what the client counted."""

    sent: int
    acked: int
    stored: int
    lost: list[str]
    duplicated: list[str]
    fold_mismatches: list[str]
    jobs: int
    statuses: dict[int, int]
    connection_errors: dict[str, int]

    def figures(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "acknowledged": self.acked, "stored": self.stored, "lost": len(self.lost),
            "duplicated": len(self.duplicated), "fold_mismatches": len(self.fold_mismatches), "jobs": self.jobs,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "connection_errors": dict(self.connection_errors),
        }


def audit(db_url: str, source: str, ledger: Ledger, external_ids: set[str]) -> Audit:
    """Read the database: acknowledged events stored exactly once; each job equals the fold of its events."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(
                select(Event.event_id, func.count()).where(Event.source == source, Event.external_id.in_(external_ids)).group_by(Event.event_id)
            ).all())
        lost = sorted(e for e in ledger.acked if counts.get(e, 0) == 0)
        duplicated = sorted(e for e, n in counts.items() if n > 1)
        mismatches = []
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            jobs = session.scalars(select(Job).where(Job.source == source, Job.external_id.in_(external_ids))).all()
            for job in jobs:
                rows = session.scalars(select(Event).where(Event.job_id == job.id)).all()
                links = [states.Link(key=(k.source, k.external_id), at=k.linked_at, uid=f"{k.id:012d}")
                         for k in session.scalars(select(JobKey).where(JobKey.job_id == job.id)).all()]
                view, _ = states.fold(job.created_at, [event_of(r) for r in rows], links, job.registered_label)
                stored = (job.state, job.attempt, job.label, job.progress, job.error, job.result)
                if stored != (view.state.value, view.attempt, view.label, view.progress, view.error, view.result):
                    mismatches.append(f"{job.id}: stored {stored} != fold {view.public()}")
        return Audit(
            sent=ledger.sent, acked=len(ledger.acked), stored=sum(1 for e in ledger.acked if counts.get(e)),
            lost=lost, duplicated=duplicated, fold_mismatches=mismatches, jobs=len(jobs),
            statuses=dict(ledger.statuses), connection_errors=dict(ledger.errors),
        )
    finally:
        engine.dispose()


# -- whole scenarios, shared by the CI tests and bench/trust.py ------------------------------------------


@dataclass
class CrashRun:
    """A crash run's outcome: the audit, the kills, what re-delivery left, and the rate."""

    audit: Audit
    kills: int
    left: list[Delivery]
    seconds: float
    planned: int

    def figures(self) -> dict[str, Any]:
        return {"planned": self.planned, "kills": self.kills, "never_acknowledged": len(self.left), "seconds": round(self.seconds, 2),
                "deliveries_per_second": round(self.audit.sent / self.seconds, 1) if self.seconds else None, **self.audit.figures()}


def crash_run(db_url: str, config_path: Any, *, jobs: int, kills: int, interval: float = 0.4, threads: int = 6,
              log_path: Any = None, budget: float = 40) -> CrashRun:
    """Load a fresh gunicorn on ``db_url`` while ``kills`` workers are SIGKILLed; re-deliver; audit."""
    from tests.conftest import server_env
    from tests.servers import Server

    srv = Server(server_env(db_url, config_path), log_path=log_path).start()
    url = f"{srv.url}/webhooks/auto"
    deliveries = make_deliveries(jobs)
    ledger = Ledger()
    killer = Killer(srv.worker_pids, times=kills, interval=interval)
    started = time.monotonic()
    try:
        if kills:
            killer.start()
        unacked = send_all(url, deliveries, ledger, threads=threads, deadline=started + budget)
        # keep the load on until every planned kill has happened, re-sending what was refused
        while killer.is_alive() and time.monotonic() < started + budget:
            if unacked:
                unacked = send_all(url, unacked, ledger, threads=threads)
            killer.join(0.2)
        killer.stop_event.set()
        if kills:
            killer.join()
        left = redeliver(url, unacked, ledger, deadline=time.monotonic() + 15)
        seconds = time.monotonic() - started
    finally:
        srv.stop()
    return CrashRun(audit(db_url, "auto", ledger, {d.external_id for d in deliveries}), len(killer.killed), left, seconds, len(deliveries))


@dataclass
class OutageRun:
    """An outage run's outcome and what was observed while the database was down and after."""

    audit: Audit
    left: list[Delivery]
    planned: int
    bad_503: list[str]  # 503 answers without a numeric Retry-After or the `unavailable` error
    readyz_down: int | None
    healthz_down: int | None
    probe_down: int | None  # a fresh delivery while down
    probe_retry_after: str | None
    acked_at_stop: int
    acked_at_end: int
    recovered_after: float  # seconds from the database's restart to /readyz 200 again

    def figures(self) -> dict[str, Any]:
        return {"planned": self.planned, "never_acknowledged": len(self.left), "readyz_while_down": self.readyz_down,
                "probe_while_down": self.probe_down, "recovered_after_seconds": round(self.recovered_after, 2), **self.audit.figures()}


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def outage_run(cluster: Any, config_path: Any, *, jobs: int, down_503s: int = 20, log_path: Any = None,
               on_down: Callable[[], None] | None = None, on_up: Callable[[], None] | None = None) -> OutageRun:
    """Load a gunicorn on a private PostgreSQL cluster, stop the cluster (immediate) under load,
    observe, start it again, let the gateway recover by itself, re-deliver what was refused, audit.
    ``on_down`` / ``on_up`` run while the database is down / once the gateway is ready again."""
    from tests.conftest import server_env
    from tests.servers import Server

    db = cluster.database("gw_" + uuid.uuid4().hex[:8])
    srv = Server(server_env(db, config_path), log_path=log_path).start()
    url = f"{srv.url}/webhooks/auto"
    deliveries = make_deliveries(jobs)
    ledger = Ledger()
    bad_503: list[str] = []

    def check(d: Delivery, r: requests.Response) -> None:
        if r.status_code == 503:
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            if not (r.headers.get("Retry-After", "").isdigit() and code == "unavailable"):
                bad_503.append(f"{d.event_id}: {dict(r.headers)} {r.text[:200]}")

    unacked: list[Delivery] = []
    started = time.monotonic()
    load = threading.Thread(target=lambda: unacked.extend(send_all(url, deliveries, ledger, threads=4, deadline=started + 40, on_response=check)))
    probe = make_deliveries(1, prefix="probe-" + uuid.uuid4().hex[:6])[0]
    try:
        load.start()
        wait_for(lambda: len(ledger.acked) >= min(50, len(deliveries) // 4), 20, "load to be acknowledged before the outage")
        cluster.stop(mode="immediate")
        acked_at_stop = len(ledger.acked)
        wait_for(lambda: ledger.statuses[503] >= down_503s, 20, "webhooks answered 503 during the outage")
        readyz_down, healthz_down = _status(srv.url + "/readyz"), _status(srv.url + "/healthz")
        r = post(requests.Session(), url, probe)
        probe_down, probe_retry_after = r.status_code, r.headers.get("Retry-After")
        if on_down:
            on_down()
        cluster.start()
        restarted = time.monotonic()
        wait_for(lambda: _status(srv.url + "/readyz") == 200, 20, "the gateway to become ready again by itself")
        recovered_after = time.monotonic() - restarted
        if on_up:
            on_up()
        load.join(45)
        left = redeliver(url, unacked + [probe], ledger, deadline=time.monotonic() + 20)
    finally:
        srv.stop()
    result = audit(db, "auto", ledger, {d.external_id for d in deliveries} | {probe.external_id})
    return OutageRun(result, left, len(deliveries) + 1, bad_503, readyz_down, healthz_down, probe_down, probe_retry_after,
                     acked_at_stop, len(ledger.acked), recovered_after)
