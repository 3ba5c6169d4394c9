"""Report a job's progress from your own workers (Celery, RQ, Sidekiq through Python, a pg-table loop).

Two ways in, one canonical body (``state`` queued / processing / complete / failed, with
``progress``, ``queue``, ``error``, ``result``, ``label``):

- **Signed webhook** (no API key in the workers): ``Reporter(base_url, secret, source)`` posts
  Standard Webhooks–signed bodies to ``/webhooks/<source>``, a source with
  ``adapter = "standard"`` whose ``secrets_env`` holds the same ``whsec_…`` secret. The job is
  named by the ``external_id`` it was registered with.
- **API key**: ``Reporter.with_api_key(base_url, api_key)`` posts to
  ``/api/jobs/<job id>/events``. The job is named by its gateway job id.

Each call is one logical event. Its id (``webhook-id``, or ``event_id`` on the API path) is fixed
before the first try and sent again on every retry, so the gateway counts it once however often
the network makes us repeat it; its ``occurred_at`` is the time of the call, so a report that
needed retries still sorts where it happened. Connection errors, timeouts, 429 and 5xx are
retried with exponential backoff and jitter, ``retries`` times; any other non-2xx answer raises
``ReportError`` at once (a 4xx does not get better by repeating it).

::

    from gateway.reporter import Reporter

    reporter = Reporter("https://gw.example.com", os.environ["WORKER_WEBHOOK_SECRET"], "worker")
    job = reporter.for_job("import-42")
    job.processing(step="reading file")
    for i, row in enumerate(rows, 1):
        ...
        job.progress(i, len(rows), "importing rows")
    job.complete({"imported": len(rows)})
    # on an exception: job.failed("bad_row", "Row 1,241: missing email", retryable=True)

The module needs only ``requests`` and ``standardwebhooks``; it imports nothing of the server.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
from standardwebhooks.webhooks import Webhook

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ReportError(Exception):
    """The gateway refused the report, or could not be reached within the retries."""

    def __init__(self, message: str, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


def _iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class Reporter:
    """Posts canonical job events to the gateway, signed (Standard Webhooks) or with an API key."""

    def __init__(
        self,
        base_url: str,
        secret: str | None = None,
        source: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        session: requests.Session | None = None,
    ):
        if api_key is None and not (secret and source):
            raise ValueError("give secret and source (signed webhooks) or api_key (the events API)")
        self.base_url = base_url.rstrip("/")
        self.source = source
        self.api_key = api_key
        self._webhook = Webhook(secret) if api_key is None and secret else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()

    @classmethod
    def with_api_key(cls, base_url: str, api_key: str, **options: Any) -> Reporter:
        """A reporter for ``POST /api/jobs/<id>/events``: jobs are named by their gateway job id."""
        return cls(base_url, api_key=api_key, **options)

    def for_job(self, job: str) -> JobReporter:
        """The same reporter bound to one job (external id, or job id on the API-key path)."""
        return JobReporter(self, job)

    # -- the four states ----------------------------------------------------------------------

    def queued(self, job: str, *, position: int | None = None, total: int | None = None, queue: str | None = None, label: str | None = None) -> dict[str, Any]:
        """The work waits; optionally where it stands in your own queue."""
        q = _clean({"name": queue, "position": position, "total": total}) or None
        return self.report(job, "queued", queue=q, label=label)

    def progress(self, job: str, current: int | float | None = None, total: int | float | None = None, step: str | None = None) -> dict[str, Any]:
        """The work runs: ``current`` of ``total`` done, in ``step``."""
        return self.report(job, "processing", progress=_clean({"current": current, "total": total, "step": step}) or None)

    def processing(self, job: str, *, step: str | None = None, label: str | None = None) -> dict[str, Any]:
        """The work has started (without numbers yet)."""
        return self.report(job, "processing", progress=_clean({"step": step}) or None, label=label)

    def complete(self, job: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """The work is done; ``result`` is shown to the watcher (a URL, counts…)."""
        return self.report(job, "complete", result=result)

    def failed(self, job: str, code: str = "failed", message: str = "The job failed.", retryable: bool = True) -> dict[str, Any]:
        """The work failed; ``retryable`` offers the Retry button."""
        return self.report(job, "failed", error={"code": code, "message": message, "retryable": retryable})

    # -- the transport ----------------------------------------------------------------------------

    def report(
        self, job: str, state: str, *, event_id: str | None = None, occurred_at: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Post one event (retrying transient failures with the same id); the gateway's JSON answer.

        ``event_id`` and ``occurred_at`` default to a fresh id and now; a caller that sends later
        than the event happened (``gateway.integrations.sender``) fixes both when it happens."""
        event_id = event_id or "evt_" + uuid.uuid4().hex
        when = occurred_at or datetime.now(UTC)
        body: dict[str, Any] = {"state": state, "occurred_at": _iso(when), **_clean(fields)}
        if self.api_key is not None:
            url = f"{self.base_url}/api/jobs/{quote(job, safe='')}/events"
            body["event_id"] = event_id
        else:
            url = f"{self.base_url}/webhooks/{quote(self.source or '', safe='')}"
            body = {"external_id": job, **body}
        data = json.dumps(body, separators=(",", ":"))
        last = "no try made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt))
            try:
                response = self.session.post(url, data=data.encode("utf-8"), headers=self._headers(event_id, data), timeout=self.timeout)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
                continue
            if 200 <= response.status_code < 300:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code not in RETRY_STATUSES:
                raise ReportError(f"the gateway refused the report: HTTP {response.status_code}", response.status_code, response.text[:2000])
            last = f"HTTP {response.status_code}"
        raise ReportError(f"the gateway could not be reached after {self.retries + 1} tries ({last})")

    def _headers(self, event_id: str, data: str) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key}"
            return headers
        assert self._webhook is not None
        now = datetime.now(UTC).replace(microsecond=0)  # each try is signed afresh: the timestamp must be recent
        headers["webhook-id"] = event_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = self._webhook.sign(msg_id=event_id, timestamp=now, data=data)
        return headers

    def _delay(self, attempt: int) -> float:
        ceiling: float = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2


class JobReporter:
    """A ``Reporter`` bound to one job: ``queued()``, ``progress(current, total, step)``, ``complete(result)``, ``failed(...)``."""

    def __init__(self, reporter: Reporter, job: str):
        self.reporter = reporter
        self.job = job

    def queued(self, **kw: Any) -> dict[str, Any]:
        return self.reporter.queued(self.job, **kw)

    def processing(self, **kw: Any) -> dict[str, Any]:
        return self.reporter.processing(self.job, **kw)

    def progress(self, current: int | float | None = None, total: int | float | None = None, step: str | None = None) -> dict[str, Any]:
        return self.reporter.progress(self.job, current, total, step)

    def complete(self, result: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.reporter.complete(self.job, result)

    def failed(self, code: str = "failed", message: str = "The job failed.", retryable: bool = True) -> dict[str, Any]:
        return self.reporter.failed(self.job, code, message, retryable)
