"""The one job JSON shape used by poll, long-poll, SSE, WebSocket and the trace."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway.models import Job


def iso(dt: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds and a Z, as the contract shows."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def job_json(job: Job) -> dict[str, Any]:
    """Every key always present; queue/progress/error/result only in their own state, else null."""
    state = job.state
    return {
        "id": job.id,
        "state": state,
        "version": job.version,
        "attempt": job.attempt,
        "source": job.source,
        "external_id": job.external_id,
        "label": job.label,
        "queue": job.queue if state == "queued" else None,
        "progress": job.progress if state == "processing" else None,
        "error": job.error if state == "failed" else None,
        "result": job.result if state == "complete" else None,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "state_changed_at": iso(job.state_changed_at),
    }


def encode(data: dict[str, Any]) -> str:
    """The one encoding of a job's JSON (compact, ASCII, keys in ``job_json``'s order), as Flask's
    ``jsonify`` writes it: poll answers, the snapshots on the bus, WebSocket and SSE frames."""
    return json.dumps(data, separators=(",", ":"))


def job_text(job: Job) -> str:
    """``job`` as a poll answers it (without the final newline of the HTTP body)."""
    return encode(job_json(job))
