"""An RQ task that imports customer rows and tells the gateway how it goes.

The gateway shows the person who started the import "Processing row 1,240 of 4,000 —
importing rows", then "Complete", or what failed with a Retry button. The task reports
through ``gateway.reporter.Reporter`` (Standard Webhooks–signed POSTs to the gateway's
``/webhooks/<source>``, a source with ``adapter = "standard"``); a report that cannot get
through is retried by the reporter with the same event id, so the gateway counts it once.

RQ runs plain functions: ``Queue("imports").enqueue(import_customers, "import-42", rows)``
(see ``enqueue.py``). The function can also be called directly, which is how the tests run it.

Environment: ``GATEWAY_URL`` (e.g. ``http://127.0.0.1:8000``), ``GATEWAY_SOURCE`` (the
source's name, e.g. ``worker``) and ``WORKER_WEBHOOK_SECRET`` (the ``whsec_…`` secret in that
source's ``secrets_env``).
"""

from __future__ import annotations

import os
from typing import Any

from gateway.reporter import Reporter

PROGRESS_EVERY = 100  # rows between progress reports: often enough to look live, rarely enough to be cheap


class BadRow(Exception):
    """A row the import cannot take; the person fixes the file and retries."""

    def __init__(self, number: int, reason: str):
        super().__init__(f"Row {number:,}: {reason}")
        self.number = number


def reporter_from_env() -> Reporter:
    """The reporter configured by GATEWAY_URL, GATEWAY_SOURCE and WORKER_WEBHOOK_SECRET."""
    return Reporter(os.environ["GATEWAY_URL"], os.environ["WORKER_WEBHOOK_SECRET"], os.environ.get("GATEWAY_SOURCE", "worker"))


def save_customer(row: dict[str, Any]) -> None:
    """Stands in for the real write (an INSERT, an API call)."""


def import_customers(external_id: str, rows: list[dict[str, Any]], reporter: Reporter | None = None) -> dict[str, Any]:
    """Import ``rows``, reporting processing → progress → complete, or failed with the bad row."""
    job = (reporter or reporter_from_env()).for_job(external_id)
    total = len(rows)
    job.progress(0, total, "reading file")
    try:
        for number, row in enumerate(rows, start=1):
            if not row.get("email"):
                raise BadRow(number, "missing email")
            save_customer(row)
            if number % PROGRESS_EVERY == 0 or number == total:
                job.progress(number, total, "importing rows")
    except BadRow as exc:
        job.failed("bad_row", str(exc), retryable=True)
        raise
    except Exception as exc:  # anything else: say so before RQ marks the job failed, so no tab waits forever
        job.failed("import_crashed", f"The import stopped: {type(exc).__name__}", retryable=True)
        raise
    result = {"imported": total}
    job.complete(result)
    return result
