"""An RQ task that imports customer rows; the gateway shows the person who started it how it goes.

The gateway shows "Position 2 of 5" while the job waits in RQ, then "Processing row 1,240 of
4,000 — importing rows", then "Complete", or what failed with a Retry button. The task itself
only reports its progress (``report_progress``); the RQ integration reports the rest:
``gateway.integrations.rq.enqueue`` reports ``queued`` when the job is enqueued, and the worker
(``rq worker -w gateway.integrations.rq.GatewayWorker imports``) reports ``processing`` when it
starts, ``complete`` with the return value, or ``failed`` with the exception's class and message
(``BadRow``: "Row 1,241: missing email").

Environment of the worker: ``GATEWAY_URL`` (e.g. ``http://127.0.0.1:8000``), ``GATEWAY_SOURCE``
(the source's name, e.g. ``worker``) and ``WORKER_WEBHOOK_SECRET`` (the ``whsec_…`` secret in that
source's ``secrets_env``).
"""

from __future__ import annotations

from typing import Any

from gateway.integrations.rq import report_progress

PROGRESS_EVERY = 100  # rows between progress reports: often enough to look live, rarely enough to be cheap


class BadRow(Exception):
    """A row the import cannot take; the person fixes the file and retries."""

    def __init__(self, number: int, reason: str):
        super().__init__(f"Row {number:,}: {reason}")
        self.number = number


def save_customer(row: dict[str, Any]) -> None:
    """Stands in for the real write (an INSERT, an API call)."""


def import_customers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Import ``rows``, reporting progress; a bad row raises ``BadRow`` (reported as the failure)."""
    total = len(rows)
    report_progress(0, total, "reading file")
    for number, row in enumerate(rows, start=1):
        if not row.get("email"):
            raise BadRow(number, "missing email")
        save_customer(row)
        if number % PROGRESS_EVERY == 0 or number == total:
            report_progress(number, total, "importing rows")
    return {"imported": total}
