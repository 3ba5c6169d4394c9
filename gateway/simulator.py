"""The demo's job simulator: a pretend import service that drives real jobs through the real
ingestion path.

A batch registers its jobs the way an integrator's backend does (``Writer.register``, a
browser token each), then a background thread per batch plays a small import worker: two
jobs at a time leave the queue, count rows up, and end ``complete`` with a result link or
``failed`` with a retryable error. Every change travels as a Standard-Webhooks-signed POST
to the gateway's own ``/webhooks/<source>`` over HTTP, so what the demo shows is exactly what
a provider's webhooks would show. A retry through the API (the page's Retry button) runs the
next attempt to completion.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from gateway.errors import RateLimited
from gateway.jobjson import iso, job_json
from gateway.models import Job
from gateway.services import Services

log = logging.getLogger("gateway.simulator")

FILES = ("customers", "orders", "invoices", "products", "suppliers", "refunds", "contacts", "shipments", "payments", "reviews", "coupons", "stores")
MAX_BATCH = 12
MAX_ACTIVE = 60  # simulated jobs one process drives at once
CONCURRENCY = 2  # jobs a batch processes side by side; the rest wait in the queue
TICKS = 10  # progress updates per job


@dataclass
class Plan:
    """What one simulated job will do."""

    job_id: str
    external_id: str
    label: str
    rows: int
    fate: str  # "complete" | "fail"
    counted: bool  # False: the first steps report no totals (progress without numbers)


def plan_fate(index: int) -> tuple[str, bool]:
    """Every third job fails (retryably); every fourth starts with a step that has no totals."""
    return ("fail" if index % 3 == 2 else "complete"), index % 4 != 1


class Simulator:
    """Registers demo jobs and plays their provider, one background thread per batch."""

    def __init__(self, gw: Services, source: str, base_url: str | None):
        self.gw = gw
        self.source = source
        self.base_url = base_url
        self._lock = threading.Lock()
        self._active = 0
        self._batches = 0

    # -- starting work ---------------------------------------------------------------------------

    def start_batch(self, count: int, tick: float, base_url: str) -> list[dict[str, Any]]:
        """Register ``count`` jobs in a queue of their own and start driving them; their ids and tokens."""
        self._reserve(count)
        try:
            with self._lock:
                self._batches += 1
                batch = f"{uuid.uuid4().hex[:6]}"
            plans = []
            with self.gw.store.transaction() as w:
                for i in range(count):
                    fate, counted = plan_fate(i)
                    external_id = f"import-{batch}-{i + 1}"
                    label = f"Import {FILES[i % len(FILES)]}.csv"
                    job, _ = w.register(self.source, external_id, None, label, f"demo-{batch}", who="demo")
                    plans.append(Plan(job.id, external_id, label, 1000 * (2 + (i * 7) % 9), fate, counted))
        except Exception:
            self._release(count)
            raise
        base = self.base_url or base_url
        # Before the page gets the ids, so a first look already shows "position 2 of 6".
        self._send_positions(base, plans, attempts=1)
        jobs = []
        for plan in plans:
            token, expires = self.gw.auth.issue(plan.job_id)
            registered = self.gw.store.get_job(plan.job_id)
            assert registered is not None  # registered just above, in this request
            jobs.append({"job": job_json(registered), "token": token, "token_expires_at": expires})
        log.info("demo batch started", extra={"batch": batch, "jobs": count})
        self._spawn(f"demo-batch-{batch}", self._run_batch, plans, tick, base)
        return jobs

    def on_retry(self, job: Job, base_url: str, tick: float = 0.5) -> None:
        """The page retried a demo job: play its next attempt, which succeeds."""
        if job.source != self.source:
            return
        self._reserve(1)
        plan = Plan(job.id, job.external_id, job.label or "Import", 3000, "complete", True)
        self._spawn(f"demo-retry-{job.id}", self._run_retry, plan, tick, self.base_url or base_url)

    # -- playing the provider ---------------------------------------------------------------------

    def _run_batch(self, plans: list[Plan], tick: float, base: str) -> None:
        waiting = deque(plans)
        lock = threading.Lock()

        def take() -> Plan | None:
            # Under the lock, so the positions everyone sees move up in one consistent step.
            with lock:
                if not waiting:
                    return None
                plan = waiting.popleft()
                self.send(base, plan.external_id, "processing", progress=self._first_progress(plan))
                self._send_positions(base, list(waiting))
                return plan

        def worker() -> None:
            time.sleep(tick)
            while (plan := take()) is not None:
                try:
                    self._process(plan, tick, base)
                except Exception:  # one job's trouble must not stop the others
                    log.exception("demo job failed to play", extra={"job_id": plan.job_id})
                finally:
                    self._release(1)

        threads = [threading.Thread(target=worker, name="demo-worker", daemon=True) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _run_retry(self, plan: Plan, tick: float, base: str) -> None:
        try:
            self._send_positions(base, [plan])
            time.sleep(tick * 3)  # a moment in the queue, so the page shows it
            self.send(base, plan.external_id, "processing", progress=self._first_progress(plan))
            self._process(plan, tick, base)
        finally:
            self._release(1)

    def _send_positions(self, base: str, queued: list[Plan], attempts: int = 5) -> None:
        """Report each waiting job's place in line, as a worker queue that knows it would."""
        for position, plan in enumerate(queued, start=1):
            self.send(base, plan.external_id, "queued", queue={"position": position, "total": len(queued)}, attempts=attempts)

    @staticmethod
    def _first_progress(plan: Plan) -> dict[str, Any]:
        if not plan.counted:
            return {"step": "reading file"}
        return {"current": 0, "total": plan.rows, "step": "importing rows"}

    def _process(self, plan: Plan, tick: float, base: str) -> None:
        """One job after its first `processing` webhook, to its end."""
        def send(state: str, **fields: Any) -> None:
            self.send(base, plan.external_id, state, **fields)

        time.sleep(tick)
        if not plan.counted:
            time.sleep(tick)
            send("processing", progress={"step": "validating columns"})
            time.sleep(tick * 2)
        stop = int(TICKS * 0.6) if plan.fate == "fail" else TICKS
        for n in range(1, stop + 1):
            current = plan.rows * n // TICKS
            send("processing", progress={"current": current, "total": plan.rows, "step": "importing rows"})
            time.sleep(tick)
        if plan.fate == "fail":
            row = plan.rows * stop // TICKS + 1
            send("failed", error={"code": "bad_row", "message": f"Row {row:,}: missing email", "retryable": True})
        else:
            send("complete", result={"url": f"{base}/demo/results/{plan.job_id}"})

    def send(self, base: str, external_id: str, state: str, *, attempts: int = 5, **fields: Any) -> int:
        """POST one signed Standard Webhooks delivery to the gateway; retried like a provider would."""
        now = datetime.now(UTC)
        body = json.dumps({"external_id": external_id, "state": state, "occurred_at": iso(now), **fields})
        msg_id = "msg_" + uuid.uuid4().hex
        secret = self.gw.sources[self.source].config.secrets[0]
        signed_at = datetime.fromtimestamp(int(now.timestamp()), tz=UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id=msg_id, timestamp=signed_at, data=body),
            "content-type": "application/json",
        }
        url = f"{base}/webhooks/{self.source}"
        status = 0
        for delay in (0.5, 1, 2, 4)[: attempts - 1] + (None,):
            req = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as res:
                    return int(res.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
                if exc.code < 500:
                    break
            except (urllib.error.URLError, OSError):
                status = 0
            if delay is None:
                break
            time.sleep(delay)
        log.warning("demo webhook not delivered", extra={"external_id": external_id, "state": state, "status": status, "url": url})
        return status

    # -- bookkeeping --------------------------------------------------------------------------------

    def _reserve(self, count: int) -> None:
        with self._lock:
            if self._active + count > MAX_ACTIVE:
                raise RateLimited(f"the demo is already running {self._active} jobs; try again when some finish", headers={"Retry-After": "10"})
            self._active += count

    def _release(self, count: int) -> None:
        with self._lock:
            self._active = max(0, self._active - count)

    def _spawn(self, name: str, fn: Any, *args: Any) -> None:
        threading.Thread(target=fn, args=args, name=name, daemon=True).start()
