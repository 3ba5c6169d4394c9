"""A job's whole story for support: registration, every delivery with its decision, retries,
links and outbound calls, in time order, and the job JSON as it is now.

``build_trace`` gathers it as data (the ``--json`` output and ``GET /api/jobs/<id>/trace``);
``render_trace`` lays it out as one screen of aligned columns for a person on support.
Three tables feed the timeline: ``deliveries`` (each webhook, with the decision taken when it
arrived), ``trace`` (registration, retries, links, and whatever other modules write through
``Writer.trace``, e.g. outbound callbacks) and ``events`` (only those that neither of the
other two already tells, such as a worker's report through the API, with the decision the
fold gives them now).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import states
from gateway.jobjson import iso, job_json
from gateway.models import Delivery, Event, Job, JobKey, TraceEntry
from gateway.store import Store, event_of

#: trace entries the store itself writes; anything else is rendered generically from its detail
#: the text rendering folds runs of progress updates longer than this into one line
_RUN = 3
#: and keeps the timeline within this many lines (its first and last rows) unless asked for all
_MAX_LINES = 40
_HEAD_LINES = 10


def build_trace(store: Store, job_id: str) -> dict[str, Any] | None:
    """The trace as data; None when the job does not exist."""
    with store.reading() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        timeline: list[dict[str, Any]] = []
        told: set[tuple[str, str]] = set()  # (source, event id) already on the timeline
        for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)):
            timeline.append(_delivery(d))
            if d.event_id and d.outcome != "rejected":  # a rejected delivery's ids are only claimed
                told.add((d.source, d.event_id))
        for t in session.scalars(select(TraceEntry).where(TraceEntry.job_id == job_id).order_by(TraceEntry.id)):
            detail = dict(t.detail or {})
            if detail.get("event_id") and detail.get("source"):
                told.add((str(detail["source"]), str(detail["event_id"])))
            timeline.append({"at": iso(t.at), "what": t.what, **detail})
        events = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.occurred_at, Event.id)).all()
        occurred = {(e.source, e.event_id): iso(e.occurred_at) for e in events}
        for entry in timeline:
            if entry["what"] == "delivery" and entry.get("event_id"):
                entry["occurred_at"] = occurred.get((entry["source"], entry["event_id"]))
        decisions = _fold_decisions(session, job, events)
        for e in events:
            if (e.source, e.event_id) in told or e.kind in (states.Kind.RETRY.value, states.Kind.LINK.value):
                continue  # a delivery or trace entry already tells this one
            timeline.append({
                "at": iso(e.received_at), "what": "event", "source": e.source, "event_id": e.event_id,
                "event_type": e.type, "kind": e.kind, "state": e.state, "occurred_at": iso(e.occurred_at),
                "decision": decisions.get(f"{e.source}:{e.event_id}"),
            })
        timeline.sort(key=lambda e: (e["at"] or "", _ORDER.get(e["what"], 1)))
        held = sum(1 for e in timeline if e["what"] == "delivery" and e.get("decision") == "held")
        for entry in timeline:
            if entry["what"] == "registered" and held:
                entry["adopted"] = held  # claimed at registration; the job started from them
                break
        return {
            "job": job_json(job),
            "keys": [
                {"source": k.source, "external_id": k.external_id, "linked_at": iso(k.linked_at)}
                for k in session.scalars(select(JobKey).where(JobKey.job_id == job_id).order_by(JobKey.id))
            ],
            "timeline": timeline,
            "events": [
                {"source": e.source, "event_id": e.event_id, "kind": e.kind, "type": e.type, "state": e.state,
                 "occurred_at": iso(e.occurred_at), "received_at": iso(e.received_at),
                 "decision": decisions.get(f"{e.source}:{e.event_id}")}
                for e in events
            ],
        }


_ORDER = {"delivery": 0, "registered": 1}  # a held delivery and the registration that adopts it, same ms


def _delivery(d: Delivery) -> dict[str, Any]:
    return {
        "at": iso(d.received_at), "what": "delivery", "delivery_id": d.id, "source": d.source, "event_id": d.event_id,
        "event_type": d.event_type, "external_id": d.external_id,
        "signature": "valid" if d.status not in (401,) else "invalid",
        "status": d.status, "outcome": d.outcome, "decision": d.decision or d.outcome,
        "state_before": d.state_before, "state_after": d.state_after, "version": d.version,
        "reason": d.reason, "size": d.size, "remote_addr": d.remote_addr, "request_id": d.request_id,
        "verified": d.outcome != "rejected",  # a rejected delivery's event and external ids are what it claimed
    }


def _fold_decisions(session: Session, job: Job, events: Sequence[Event]) -> dict[str, str]:
    """What the fold decides for each of the job's events today (same inputs as Writer._refold)."""
    links = [states.Link(key=(k.source, k.external_id), at=k.linked_at, uid=f"{k.id:012d}")
             for k in session.scalars(select(JobKey).where(JobKey.job_id == job.id))]
    _, decisions = states.fold(job.created_at, [event_of(e) for e in events], links, job.registered_label)
    return {uid: d.value for uid, d in decisions.items()}


# -- rendering ---------------------------------------------------------------------------------

_COLUMNS = ("TIME", "WHAT", "SOURCE", "EVENT", "SIG", "DECISION", "STATE", "VER")


def render_trace(data: dict[str, Any], *, show_all: bool = False) -> str:
    """The trace as one screen of text: a header with the job now, then one aligned row per happening.

    Runs of progress updates are folded into one row and very long timelines keep their first
    and last rows, unless ``show_all``."""
    job = data["job"]
    head = [f"{job['id']}   {job['source']}/{job['external_id']}" + (f"   {job['label']!r}" if job["label"] else "")]
    now = f"now: {job['state']}   attempt {job['attempt']}   version {job['version']}   updated {job['updated_at']}"
    head.append(now)
    if job["state"] == "failed" and job["error"]:
        err = job["error"]
        head.append(f"error: {err['code']}: {err['message']}" + ("" if err.get("retryable", True) else "  (not retryable)"))
    elif job["state"] == "processing" and job["progress"]:
        p = job["progress"]
        head.append(f"progress: {p.get('current')} of {p.get('total')}" + (f" — {p['step']}" if p.get("step") else ""))
    elif job["state"] == "queued" and job["queue"]:
        q = job["queue"]
        head.append(f"queue: {q.get('name')}  position {q.get('position')} of {q.get('total')}")
    elif job["state"] == "complete" and job["result"]:
        head.append("result: " + ", ".join(f"{k}={v}" for k, v in job["result"].items()))
    linked = [k for k in data.get("keys", []) if k.get("linked_at")]
    if linked:
        head.append("attempts linked: " + ", ".join(f"{k['source']}/{k['external_id']}" for k in linked))

    rows = [_row(e) for e in data["timeline"]]
    if not show_all:
        rows = _fit(_fold_progress(rows))
    return "\n".join(head + [""] + _table(rows, data["timeline"]))


def _table(rows: list[dict[str, Any]], timeline: Sequence[dict[str, Any]]) -> list[str]:
    days = sorted({(e["at"] or "")[:10] for e in timeline if e.get("at")})
    cells = [[r.get("time", ""), r.get("what", ""), r.get("source", ""), r.get("event", ""), r.get("sig", ""),
              r.get("decision", ""), r.get("state", ""), r.get("ver", "")] for r in rows if "note" not in r]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(_COLUMNS)]
    widths[3] = min(widths[3], 60)

    def fmt(values: Sequence[str]) -> str:
        parts = [(v if len(v) <= w else v[: w - 1] + "…").ljust(w) for v, w in zip(values, widths)]
        return "  ".join(parts).rstrip()

    out = [f"times UTC, {days[0]}" + (f" … {days[-1]}" if len(days) > 1 else "")] if days else []
    out.append(fmt(_COLUMNS))
    day = days[0] if days else ""
    for r in rows:
        if "note" in r:
            out.append("  " + r["note"])
            continue
        if r.get("day") and r["day"] != day:
            day = r["day"]
            out.append(f"-- {day}")
        out.append(fmt([r.get("time", ""), r.get("what", ""), r.get("source", ""), r.get("event", ""), r.get("sig", ""),
                        r.get("decision", ""), r.get("state", ""), r.get("ver", "")]))
        if r.get("extra"):
            out.append(" " * (widths[0] + 2) + "↳ " + r["extra"])
    if not rows:
        out.append("  (nothing recorded)")
    return out


def _note(text: str) -> dict[str, Any]:
    return {"note": text}


def _short(value: Any, limit: int = 34) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _change(before: str | None, after: str | None) -> str:
    if before is None and after is None:
        return ""
    return f"{before or '-'} → {after or '-'}"


def _row(e: dict[str, Any]) -> dict[str, Any]:
    at = e.get("at") or ""
    row: dict[str, Any] = {"time": at[11:23], "day": at[:10], "what": e["what"], "raw": e}
    what = e["what"]
    if what in ("delivery", "worker_event"):
        event = " ".join(filter(None, [_short(e.get("event_id")), _short(e.get("event_type"), 24)]))
        row.update(source=e.get("source") or "", event=event or "-", sig=e.get("signature") or ("api key" if what == "worker_event" else ""),
                   decision=e.get("decision") or "", state=_change(e.get("state_before"), e.get("state_after")),
                   ver=f"v{e['version']}" if e.get("version") is not None else "")
        if e.get("decision") == "held":
            row["extra"] = f"no job for {e.get('source')}/{e.get('external_id')} yet; adopted when it was registered"
        elif e.get("decision") in ("stale", "superseded") and e.get("occurred_at"):
            why = "older than what the job already had" if e["decision"] == "stale" else "for an id an attempt link replaced"
            row["extra"] = f"occurred {e['occurred_at'][11:23]}: {why}; kept, not applied"
        elif e.get("verified") is False:
            row["extra"] = f"rejected, unverified: {e.get('reason') or 'refused'}" + (
                f" (claimed {e.get('source')}/{e.get('external_id')}; never applied)" if e.get("external_id") else "")
        elif e.get("reason"):
            row["extra"] = str(e["reason"])
    elif what == "event":
        event = " ".join(filter(None, [_short(e.get("event_id")), _short(e.get("event_type"), 24)]))
        row.update(source=e.get("source") or "", event=event, decision=e.get("decision") or "",
                   state=f"→ {e['state']}" if e.get("state") else "")
        row["extra"] = f"{e.get('kind')} event, occurred {e.get('occurred_at')}; decision as the fold sees it now"
    elif what == "registered":
        held = e.get("adopted") or 0
        row.update(source=e.get("source") or "", event=f"external id {_short(e.get('external_id'))}",
                   state=f"+ {held} held event{'s' if held > 1 else ''}" if held else "→ queued")
        row["extra"] = " ".join(f"{k}={v}" for k, v in (("by", e.get("by")), ("queue", e.get("queue")), ("label", e.get("label"))) if v)
    elif what == "retry":
        row.update(source="gateway", event=f"attempt {e.get('attempt')}", decision="applied", state="failed → queued")
        row["extra"] = f"by {e.get('by')}" if e.get("by") else ""
    elif what == "attempt_linked":
        row.update(source=e.get("source") or "", event=f"external id {_short(e.get('external_id'))}", decision="linked")
        row["extra"] = f"by {e.get('by')}" if e.get("by") else ""
    elif what == "replay":  # gateway/replay.py: a stored delivery run through its adapter again
        row.update(source=e.get("source") or "", event=f"delivery dlv_{e.get('delivery_id')}", decision=str(e.get("outcome") or ""))
        said = ", ".join(f"{_short(x.get('event_id'))} {x.get('decision')}" for x in e.get("events") or [])
        row["extra"] = f"by {e.get('by')}" + (f": {said}" if said else "")
    else:  # written by other modules (outbound callbacks, watchdog…): show what it says
        detail = {k: v for k, v in e.items() if k not in ("at", "what") and v is not None}
        said = next((detail.pop(k) for k in ("decision", "outcome", "result") if k in detail), "")
        row.update(source=str(detail.pop("source", "") or ""), decision=str(said))
        for key in ("attempt", "try", "status"):
            if key in detail:
                row["event"] = (row.get("event", "") + f" {key} {detail.pop(key)}").strip()
        row["state"] = _change(detail.pop("state_before", None), detail.pop("state_after", None))
        if "version" in detail:
            row["ver"] = f"v{detail.pop('version')}"
        row["extra"] = " ".join(f"{k}={_fmt(v, row['day'])}" for k, v in detail.items())
    if what != "delivery" and "version" in e and e["version"] is not None:
        row["ver"] = f"v{e['version']}"
    return row


def _fmt(value: Any, day: str) -> str:
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and value[10:11] == "T":
        return value[11:23] if value[:10] == day else value[:10] + " " + value[11:23]  # the row's day goes without saying
    if isinstance(value, (list, dict)):
        return _short(json.dumps(value, separators=(",", ":"), default=str), 80)
    return _short(value, 60)


def _cost(row: dict[str, Any]) -> int:
    return 2 if row.get("extra") else 1


def _fit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first and last rows within ``_MAX_LINES`` lines, and a note saying how many are hidden."""
    if sum(_cost(r) for r in rows) <= _MAX_LINES:
        return rows
    head: list[dict[str, Any]] = []
    used = 0
    for r in rows:
        if used + _cost(r) > _HEAD_LINES:
            break
        head.append(r)
        used += _cost(r)
    tail: list[dict[str, Any]] = []
    for r in reversed(rows[len(head):]):
        if used + _cost(r) > _MAX_LINES - 1:
            break
        tail.insert(0, r)
        used += _cost(r)
    hidden = len(rows) - len(head) - len(tail)
    return head + [_note(f"… {hidden} rows not shown (--all shows every row) …")] + tail


def _is_progress(row: dict[str, Any]) -> bool:
    e = row.get("raw") or {}
    return (e.get("what") in ("delivery", "worker_event") and e.get("decision") == "applied"
            and e.get("state_before") == e.get("state_after") == "processing")


def _fold_progress(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the middle of each run of more than ``_RUN`` progress updates by one note."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and _is_progress(rows[j]):
            j += 1
        if j - i > _RUN:
            out.append(rows[i])
            out.append(_note(f"… {j - i - 2} more progress updates, {rows[i + 1]['time']} – {rows[j - 2]['time']} …"))
            out.append(rows[j - 1])
            i = j
        else:
            out.extend(rows[i:max(j, i + 1)])
            i = max(j, i + 1)
    return out
