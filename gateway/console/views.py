"""The console's pages: search, a job's story, deliveries, sources (contract section 11)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import abort, current_app, redirect, render_template, request, url_for

from gateway.console.auth import bp, by, current, gateway_response, signed_in
from gateway.context import gateway
from gateway.ids import utcnow
from gateway.signals import job_retried
from gateway.support import find_jobs, list_deliveries, source_activity
from gateway.trace import build_trace

log = logging.getLogger("gateway.console")

EXACT = ("id", "external id", "linked external id", "event id", "delivery id", "request id")
OUTCOMES = ("accepted", "duplicate", "ignored", "rejected", "invalid")
PAGE = 50
HIDDEN = ("signature", "secret", "authorization", "token", "key")


def _page(template: str, **values: Any) -> Any:
    return gateway_response(render_template(template, who=current(), **values))


def _masked(value: Any, name: str = "") -> Any:
    """A trace detail fit for a page: anything named like a credential shows as masked."""
    if any(word in name.lower() for word in HIDDEN) and name not in ("signature",) and value not in (None, ""):
        return "••••• (masked)"
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, name) for v in value]
    return value


def _summary(e: dict[str, Any]) -> str:
    what = e.get("what", "")
    if what == "delivery":
        why = f" ({e['reason']})" if e.get("reason") else ""
        change = f" {e.get('state_before') or '∅'} → {e.get('state_after')}" if e.get("state_after") else ""
        return f"delivery from {e.get('source')}: {e.get('event_type') or 'event'}, {e.get('decision')}{change}{why}"
    if what == "registered":
        return f"registered by {e.get('by', '?')} ({e.get('source')} / {e.get('external_id')})"
    if what == "retry":
        return f"retry requested by {e.get('by', '?')}"
    if e.get("state_after") or e.get("state"):
        return f"{what}: {e.get('state_before') or ''} → {e.get('state_after') or e.get('state')}".replace(": →", ": ")
    return str(what)


def explain(reason: str | None, secrets: int) -> str:
    """A rejected delivery's stored reason, in the words a person on support reads on a ticket."""
    text = reason or ""
    if "matches no active" in text or "matches any active" in text:
        return f"the signature matched none of the source's {secrets} active secret{'' if secrets == 1 else 's'} ({text})"
    if "outside the tolerance" in text:
        return f"the signature's timestamp was too old or in the future ({text})"
    if text.startswith("missing"):
        return f"the request carried no signature: {text}"
    return text


@bp.get("/")
@signed_in
def home() -> Any:
    """Search: one box; an exact single hit goes straight to the job."""
    q = request.args.get("q", "").strip()[:255]
    hits = find_jobs(gateway().store, q) if q else []
    exact = [h for h in hits if h.matched in EXACT]
    if len(exact) == 1:
        return redirect(url_for("console.job", job_id=exact[0].job_id))
    return _page("console/search.html", q=q, hits=hits)


@bp.get("/jobs/<job_id>")
@signed_in
def job(job_id: str) -> Any:
    """A job: its state live through <job-status>, its story as a timeline, Retry when failed."""
    gw = gateway()
    data = build_trace(gw.store, job_id[:64])
    if data is None:
        abort(404, "no such job")
    token, _ = gw.auth.issue(data["job"]["id"], ["read"])
    timeline = [{"summary": _summary(e), "at": e.get("at"), "what": e.get("what"), "detail": _masked(e)} for e in data["timeline"]]
    return _page("console/job.html", job=data["job"], timeline=timeline, token=token)


@bp.post("/jobs/<job_id>/retry")
@signed_in
def retry(job_id: str) -> Any:
    """The API's retry, taken by a person: recorded in the trace as console:<key label>."""
    gw = gateway()
    with gw.store.transaction() as w:
        job = w.retry(job_id[:64], by=by())
        gw.outbox.enqueue_callback(w, job)
    log.info("retry requested from the console", extra={"job_id": job.id, "attempt": job.attempt})
    job_retried.send(current_app._get_current_object(), job=job)  # type: ignore[attr-defined]  # current_app is typed as Flask, not as its proxy
    return redirect(url_for("console.job", job_id=job.id), 303)


@bp.get("/deliveries")
@signed_in
def deliveries() -> Any:
    """Deliveries newest first, by source and outcome, PAGE at a time."""
    gw = gateway()
    source = request.args.get("source", "")
    outcome = request.args.get("outcome", "")
    try:
        offset = max(0, min(int(request.args.get("offset", "0")), 10**6))
    except ValueError:
        offset = 0
    rows = list_deliveries(gw.store, source=source if source in gw.sources else None,
                           outcome=outcome if outcome in OUTCOMES else None, limit=PAGE + 1, offset=offset)
    for row in rows:
        known = gw.sources.get(row["source"])
        row["why"] = explain(row["reason"], len(known.config.secrets) if known else 0) if row["outcome"] == "rejected" else row["reason"] or ""
    return _page("console/deliveries.html", rows=rows[:PAGE], more=len(rows) > PAGE, offset=offset, page=PAGE,
                 source=source, outcome=outcome, sources=sorted(gw.sources), outcomes=OUTCOMES)


@bp.get("/sources")
@signed_in
def sources() -> Any:
    """Per configured source: the last 24 h by outcome, the last delivery's age, active secrets (a count)."""
    gw = gateway()
    now = utcnow()
    activity = source_activity(gw.store, now - timedelta(hours=24))
    rows = []
    for name in sorted(gw.sources):
        seen = activity.get(name, {"counts": {}, "last": None})
        counts = seen["counts"]
        top = max(counts.values(), default=0) or 1
        last = seen["last"]
        rows.append({"name": name, "counts": [(o, counts.get(o, 0), round(100 * counts.get(o, 0) / top)) for o in OUTCOMES],
                     "age": int((now - last).total_seconds()) if last else None,
                     "secrets": len(gw.sources[name].config.secrets)})
    return _page("console/sources.html", rows=rows)
