"""The console's pages: search, a job's story, deliveries, sources (contract section 11)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import abort, current_app, redirect, render_template, request, url_for

from gateway.console.auth import bp, by, current, gateway_response, signed_in
from gateway.context import gateway
from gateway.errors import NotFound
from gateway.ids import JOB_ID_RE, utcnow
from gateway.messages import endpoint_status, list_messages, resend
from gateway.replay import replay
from gateway.signals import job_retried
from gateway.support import find_jobs, list_deliveries, source_activity
from gateway.trace import build_trace

log = logging.getLogger("gateway.console")

EXACT = ("id", "external id", "linked external id", "event id", "delivery id", "request id")
OUTCOMES = ("accepted", "duplicate", "ignored", "rejected", "invalid")
PAGE = 50
DEAD_SHOWN = 10  # dead messages listed per endpoint, oldest first (`gateway messages --dead` lists all)
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
    if what in ("forward", "callback", "details"):
        to = f" to {e['endpoint']}" if e.get("endpoint") else ""
        why = f" ({e['error']})" if e.get("error") else ""
        return f"{what} {e.get('type') or ''}{to}: try {e.get('try', '?')}, {e.get('outcome', '?')}{why}".replace("  ", " ")
    if what == "forward_resend":
        return f"re-send of message {e.get('message')} to {e.get('endpoint')} requested by {e.get('by', '?')}"
    if what == "replay":
        return f"replay of delivery dlv_{e.get('delivery_id')} requested by {e.get('by', '?')}: {e.get('outcome', '?')}"
    if what == "stalled":
        return f"watchdog: no word since {e.get('quiet_since')} (stall after {e.get('stall_after')} s)"
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
    timeline = [{"summary": _summary(e), "at": e.get("at"), "what": e.get("what"), "detail": _masked(e),
                 "replayable": e.get("what") == "delivery" and bool(e.get("verified")) and e.get("delivery_id") is not None,
                 "delivery_id": e.get("delivery_id")} for e in data["timeline"]]
    return _page("console/job.html", job=data["job"], timeline=timeline, token=token)


@bp.post("/deliveries/<delivery_id>/replay")
@signed_in
def replay_delivery(delivery_id: str) -> Any:
    """The API's replay of a stored delivery, taken by a person from the job's story: the trace
    says console:<key label>; back to the job the form came from."""
    if not delivery_id.isdigit() or len(delivery_id) > 18:
        raise NotFound(f"no stored delivery {delivery_id[:40]}", code="delivery_not_found")
    answer = replay(gateway(), int(delivery_id), by=by())
    job_id = request.form.get("job", "")
    log.info("delivery replayed from the console", extra={"delivery_id": int(delivery_id), "status": answer["status"],
                                                          "job_id": job_id if JOB_ID_RE.match(job_id) else None})
    if JOB_ID_RE.match(job_id):
        return redirect(url_for("console.job", job_id=job_id, _anchor="story"), 303)
    return redirect(url_for("console.deliveries"), 303)


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


def _when(name: str, problems: list[str]) -> datetime | None:
    """A time filter from the query string: ISO 8601, read as UTC without an offset (the
    form's datetime-local field sends none); anything else is ignored and said so."""
    raw = request.args.get(name, "").strip()[:40]
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"“{raw}” is not a time (use 2026-12-05T14:30); the {name} filter was left out")
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@bp.get("/deliveries")
@signed_in
def deliveries() -> Any:
    """Deliveries newest first, by source, outcome and receipt time (UTC), PAGE at a time."""
    gw = gateway()
    source = request.args.get("source", "")
    outcome = request.args.get("outcome", "")
    problems: list[str] = []
    since, until = _when("since", problems), _when("until", problems)
    try:
        offset = max(0, min(int(request.args.get("offset", "0")), 10**6))
    except ValueError:
        offset = 0
    rows = list_deliveries(gw.store, source=source if source in gw.sources else None,
                           outcome=outcome if outcome in OUTCOMES else None, since=since, until=until,
                           limit=PAGE + 1, offset=offset)
    for row in rows:
        known = gw.sources.get(row["source"])
        row["why"] = explain(row["reason"], len(known.config.secrets) if known else 0) if row["outcome"] == "rejected" else row["reason"] or ""
    shown = {"source": source, "outcome": outcome, "since": _field(since), "until": _field(until)}
    return _page("console/deliveries.html", rows=rows[:PAGE], more=len(rows) > PAGE, offset=offset, page=PAGE,
                 filters=shown, sources=sorted(gw.sources), outcomes=OUTCOMES, problems=problems,
                 last_hour=_field(utcnow() - timedelta(hours=1)), last_day=_field(utcnow() - timedelta(hours=24)))


def _stacked(counts: dict[str, int], top: int) -> list[tuple[str, float, float]]:
    """One source's 24 h bar: (outcome, x, width) in a 0–100 box, scaled to the busiest source."""
    out, x = [], 0.0
    for outcome in OUTCOMES:
        width = 100 * counts.get(outcome, 0) / top
        if width:
            out.append((outcome, round(x, 2), round(max(width, 0.5), 2)))
            x += width
    return out


def _age(seconds: int) -> str:
    """How long ago, as a person says it on a ticket."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _field(at: datetime | None) -> str:
    """A UTC time as a datetime-local field's value (minutes)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if at else ""


@bp.get("/sources")
@signed_in
def sources() -> Any:
    """Per configured source: the last 24 h by outcome, the last delivery's age, active secrets
    (a count); per forwarding endpoint: pending and dead messages, the dead ones with Re-send."""
    gw = gateway()
    now = utcnow()
    activity = source_activity(gw.store, now - timedelta(hours=24))
    top = max((sum(a["counts"].values()) for a in activity.values()), default=0) or 1
    rows = []
    for name in sorted(gw.sources):
        seen = activity.get(name, {"counts": {}, "last": None})
        counts, last = seen["counts"], seen["last"]
        rows.append({"name": name, "counts": [(o, counts.get(o, 0)) for o in OUTCOMES], "bar": _stacked(counts, top),
                     "total": sum(counts.values()), "age": _age(int((now - last).total_seconds())) if last else None,
                     "secrets": len(gw.sources[name].config.secrets)})
    endpoints = endpoint_status(gw.store, gw.config.endpoints)
    for endpoint in endpoints:
        endpoint["dead_messages"] = list_messages(gw.store, endpoint=endpoint["name"], dead_only=True, limit=DEAD_SHOWN)
    return _page("console/sources.html", rows=rows, outcomes=OUTCOMES, endpoints=endpoints)


@bp.post("/messages/<message_id>/resend")
@signed_in
def resend_message(message_id: str) -> Any:
    """The API's re-send of a forwarded message, taken by a person: the trace says console:<key label>."""
    if not message_id.isdigit() or len(message_id) > 18:
        raise NotFound(f"no message {message_id[:40]}", code="message_not_found")
    message = resend(gateway().store, int(message_id), by=by())
    for sender in current_app.extensions.get("forward_senders", {}).values():
        sender.wake.set()
    log.info("forwarded message re-sent from the console", extra={"message_id": message["id"], "job_id": message["job_id"]})
    return redirect(url_for("console.sources", _anchor=f"endpoint-{message['endpoint']}"), 303)
