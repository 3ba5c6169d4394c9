"""A job's whole story for support: registration, every delivery with its decision, retries,
links and outbound calls, in time order, and the job JSON as it is now."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from gateway.jobjson import iso, job_json
from gateway.models import Delivery, Event, Job, TraceEntry
from gateway.store import Store


def build_trace(store: Store, job_id: str) -> dict[str, Any] | None:
    """The trace as data; None when the job does not exist."""
    with store.reading() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        entries: list[dict[str, Any]] = []
        for t in session.scalars(select(TraceEntry).where(TraceEntry.job_id == job_id)):
            entries.append({"at": iso(t.at), "what": t.what, **(t.detail or {})})
        for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id)):
            entries.append({
                "at": iso(d.received_at), "what": "delivery", "source": d.source, "event_id": d.event_id,
                "event_type": d.event_type, "external_id": d.external_id, "signature": "valid" if d.status != 401 else "invalid",
                "status": d.status, "decision": d.decision or d.outcome, "state_before": d.state_before,
                "state_after": d.state_after, "request_id": d.request_id,
            })
        events = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.occurred_at, Event.id)).all()
        entries.sort(key=lambda e: (e["at"], 0 if e["what"] == "registered" else 1))
        return {
            "job": job_json(job),
            "timeline": entries,
            "events": [
                {"source": e.source, "event_id": e.event_id, "kind": e.kind, "type": e.type, "state": e.state,
                 "occurred_at": iso(e.occurred_at), "received_at": iso(e.received_at)}
                for e in events
            ],
        }


def render_trace(data: dict[str, Any]) -> str:
    """The trace as one screen of text for a person on support."""
    job = data["job"]
    lines = [f"{job['id']}  {job['source']}/{job['external_id']}  {job['label'] or ''}".rstrip(),
             f"now: {job['state']} (attempt {job['attempt']}, version {job['version']})", ""]
    for e in data["timeline"]:
        what = e["what"]
        if what == "delivery":
            change = f"{e['state_before']} -> {e['state_after']}" if e.get("state_before") else ""
            lines.append(f"{e['at']}  delivery  {e['source']} {e['event_id'] or '-'} {e['event_type'] or ''}  "
                         f"sig={e['signature']} {e['decision']} {change}".rstrip())
        else:
            detail = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("at", "what") and v is not None)
            lines.append(f"{e['at']}  {what:<9} {detail}")
    return "\n".join(lines)
