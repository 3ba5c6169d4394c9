"""The jobs API: register jobs and mint browser tokens (integrators), read jobs (browsers),
retry, worker-reported events, next-attempt links, and the trace (support)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from adapters.base import ProviderEvent
from adapters.standard import canonical_fields
from gateway import polls
from gateway.auth import SCOPES, Principal
from gateway.context import gateway
from gateway.errors import BadRequest, NotFound
from gateway.http import API_PREFIX
from gateway.ids import JOB_ID_RE
from gateway.jobjson import job_json
from gateway.limits import public
from gateway.models import Job
from gateway.signals import job_retried
from gateway.states import Kind
from gateway.storable import require_storable
from gateway.store import API_SOURCE

bp = Blueprint("api", __name__, url_prefix=API_PREFIX)
log = logging.getLogger("gateway.api")

MAX_EXTERNAL_ID = 255


def _json_body() -> dict[str, Any]:
    try:
        body = request.get_json(silent=True, force=True)
    except RecursionError:  # deeply nested JSON: silent=True only covers decode errors
        raise BadRequest("the body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    require_storable(body)
    return body


def _string(body: dict[str, Any], key: str, *, required: bool = False, limit: int = 255) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key} is required", code=f"missing_{key}")
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{key} must be a string of 1-{limit} characters", code=f"invalid_{key}")
    return value


def _job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise NotFound("no such job", code="job_not_found")
    return job_id


def _source_name(body: dict[str, Any]) -> str:
    source = _string(body, "source", required=True, limit=64)
    assert source is not None
    if source != API_SOURCE and source not in gateway().sources:
        known = ", ".join(sorted(gateway().sources)) or "none configured"
        raise BadRequest(f"unknown source {source!r} (configured: {known}; or 'api' for jobs reported only through the API)", code="unknown_source")
    return source


def job_response(job: Job, status: int = 200) -> Response:
    """``job`` as every endpoint that reads or writes one job answers it (JSON, ETag, no-cache)."""
    return polls.job_answer(job, status).response()


# -- integrator -------------------------------------------------------------------------------


@bp.post("/jobs")
def register_job() -> Any:
    gw = gateway()
    who = gw.auth.require_api_key(request)
    body = _json_body()
    source = _source_name(body)
    external_id = _string(body, "external_id", required=True, limit=MAX_EXTERNAL_ID)
    job_id = _string(body, "id", limit=64)
    if job_id is not None and not JOB_ID_RE.match(job_id):
        raise BadRequest("id must be job_ followed by 1-60 of [A-Za-z0-9_-]", code="invalid_id")
    label = _string(body, "label", limit=200)
    queue = _string(body, "queue", limit=128)
    assert external_id is not None
    with gw.store.transaction() as w:
        job, created = w.register(source, external_id, job_id, label, queue, who=who.name)
    token, expires = gw.auth.issue(job.id)
    log.info("job registered" if created else "job registration repeated", extra={"job_id": job.id, "source": source, "request_id": g.request_id})
    return jsonify({"job": job_json(job), "token": token, "token_expires_at": expires}), 201 if created else 200


@bp.post("/tokens")
def mint_token() -> Any:
    gw = gateway()
    gw.auth.require_api_key(request)
    body = _json_body()
    job_id = _string(body, "job", required=True, limit=64)
    assert job_id is not None
    if not JOB_ID_RE.match(job_id):
        raise BadRequest("job must be a job id: job_ followed by 1-60 of [A-Za-z0-9_-]", code="invalid_job")
    scopes = body.get("scopes", ["read"])
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise BadRequest(f"scopes must be a non-empty list of {list(SCOPES)}", code="invalid_scopes")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 7 * 86400):
        raise BadRequest("ttl must be seconds between 1 and 604800", code="invalid_ttl")
    token, expires = gw.auth.issue(job_id, scopes, ttl)
    return jsonify({"token": token, "job": job_id, "scopes": sorted(set(scopes)), "expires_at": expires}), 201


@bp.post("/jobs/<job_id>/events")
def worker_event(job_id: str) -> Any:
    gw = gateway()
    gw.auth.require_api_key(request)
    body = _json_body()
    fields = canonical_fields(body, require_external_id=False)
    given = body.get("event_id")
    if given is not None and (not isinstance(given, str) or not given or len(given) > 128):
        raise BadRequest("event_id must be a string of 1-128 characters", code="invalid_event_id")
    job_id = _job_id(job_id)
    event_id = f"{job_id}:{given or uuid.uuid4().hex}"
    fields["external_id"] = job_id
    pe = ProviderEvent(event_id=event_id, type=f"job.{fields['state'].value}", **fields)
    with gw.store.transaction() as w:
        w.lock_job(job_id)  # 404 before recording anything
        outcome = w.record_event(API_SOURCE, pe, kind=Kind.WORKER, job_id=job_id)
        w.trace(job_id, "worker_event", {
            "source": API_SOURCE, "event_id": event_id, "event_type": pe.type, "decision": outcome.decision.value,
            "state_before": outcome.state_before, "state_after": outcome.state_after, "request_id": g.request_id,
        })
    job = gw.store.get_job(job_id)
    assert job is not None
    status = "duplicate" if outcome.decision.value == "duplicate" else "accepted"
    log.info("worker event %s", outcome.decision.value, extra={"job_id": job_id, "state": job.state, "version": job.version, "request_id": g.request_id})
    return jsonify({"status": status, "decision": outcome.decision.value, "job": job_json(job)})


@bp.post("/jobs/<job_id>/attempts")
def link_attempt(job_id: str) -> Any:
    gw = gateway()
    who = gw.auth.require_api_key(request)
    body = _json_body()
    source = _source_name(body)
    external_id = _string(body, "external_id", required=True, limit=MAX_EXTERNAL_ID)
    assert external_id is not None
    with gw.store.transaction() as w:
        job = w.link_attempt(_job_id(job_id), source, external_id, by=who.name)
    log.info("attempt linked", extra={"job_id": job.id, "source": source, "request_id": g.request_id})
    return job_response(job)


# -- browser ------------------------------------------------------------------------------------


def read_principal(job_id: str) -> Principal:
    return gateway().auth.require_job(request, job_id, "read")


@bp.get("/jobs/<job_id>")
@public
def get_job(job_id: str) -> Any:
    """One job's JSON for its browser (gateway/polls.py decides, as for the shortcut in front)."""
    gw = gateway()
    read_principal(job_id)
    _job_id(job_id)
    wait = request.args.get("wait")
    inm = request.headers.get("If-None-Match")
    if wait is not None and inm:
        answer = polls.long_poll(gw, job_id, inm, _wait_seconds(wait, gw.config.long_poll_max))
    else:
        asked = request.environ.get(polls.ASKED_MEMORY)
        answer = (None if asked else polls.from_memory(gw, job_id, inm)) or polls.from_database(gw, job_id, inm)
    if answer is None:
        raise NotFound("no such job (yet)", code="job_not_found")
    return answer.response()


def _wait_seconds(raw: str, ceiling: int) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        raise BadRequest("wait must be a number of seconds", code="invalid_wait") from None
    if seconds != seconds or seconds < 0:
        raise BadRequest("wait must be a number of seconds", code="invalid_wait")
    return min(seconds, float(ceiling))


@bp.post("/jobs/<job_id>/retry")
@public
def retry(job_id: str) -> Any:
    gw = gateway()
    who = gw.auth.require_job(request, job_id, "retry")
    with gw.store.transaction() as w:
        job = w.retry(_job_id(job_id), by=who.name)
        gw.outbox.enqueue_callback(w, job)  # durable with the retry itself
    log.info("retry requested", extra={"job_id": job.id, "attempt": job.attempt, "request_id": g.request_id})
    job_retried.send(current_app._get_current_object(), job=job)  # type: ignore[attr-defined]  # current_app is typed as Flask, not as its proxy
    return job_response(job, 202)


@bp.post("/jobs/<job_id>/reconcile")
def reconcile_job(job_id: str) -> Any:
    """Our addition (issue 21): owe a status read of the job from its provider's API now
    (gateway/reconcile.py); 202 with the read's outbox row, 409 when finished or not reconciled."""
    gw = gateway()
    who = gw.auth.require_api_key(request)
    from gateway import reconcile

    item = reconcile.ask_now(gw.store, _job_id(job_id), by=who.name, sources=gw.sources, env=gw.config.env)
    gw.outbox.wake.set()
    log.info("reconcile requested", extra={"job_id": item.job_id, "request_id": g.request_id})
    return jsonify({"job_id": item.job_id, "reconcile": {"id": item.id, "source": item.source, "external_id": item.payload.get("external_id"),
                                                          "status": item.status}}), 202


@bp.get("/jobs/<job_id>/trace")
def trace(job_id: str) -> Any:
    gw = gateway()
    gw.auth.require_api_key(request)
    from gateway.support import resolve_job
    from gateway.trace import build_trace

    data = build_trace(gw.store, job_id)
    if data is None:  # an external id or provider event id naming one job, as `gateway trace` takes
        resolved, _, found = resolve_job(gw.store, job_id)
        data = build_trace(gw.store, resolved) if resolved else None
        if data is None:
            hints = [h.as_dict() for h in found]
            body = {"error": {"code": "job_not_found", "message": "no such job" + ("; closest matches in suggestions" if hints else "")}, "suggestions": hints}
            return jsonify(body), 404
    return jsonify(data)


DELIVERY_OUTCOMES = ("accepted", "duplicate", "ignored", "rejected", "invalid")


@bp.get("/deliveries")
def deliveries() -> Any:
    """Recent deliveries for support (API key): ``outcome``, ``source``, ``job`` (a job id or an
    external id or event id naming one job), ``limit`` (1-500). Rejected ones carry the ids they
    claimed, marked ``verified: false``."""
    gw = gateway()
    gw.auth.require_api_key(request)
    from gateway.support import list_deliveries, resolve_job

    unknown = set(request.args) - {"outcome", "source", "job", "limit"}
    if unknown:
        raise BadRequest("unknown query parameter; these filter: outcome, source, job, limit", code="invalid_filter")
    outcome = request.args.get("outcome")
    if outcome is not None and outcome not in DELIVERY_OUTCOMES:
        raise BadRequest(f"outcome must be one of {', '.join(DELIVERY_OUTCOMES)}", code="invalid_outcome")
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise BadRequest("limit must be 1-500", code="invalid_limit")
    source, job = request.args.get("source"), request.args.get("job")
    if (source is not None and not 1 <= len(source) <= 64) or (job is not None and not 1 <= len(job) <= 255):
        raise BadRequest("source is 1-64 characters, job 1-255", code="invalid_filter")
    job_id = None
    if job:
        job_id, _, _ = resolve_job(gw.store, job)
        if job_id is None:
            raise NotFound("no such job", code="job_not_found")
    rows = list_deliveries(gw.store, outcome=outcome, source=source, job_id=job_id, limit=int(limit))
    return jsonify({"deliveries": rows})
@bp.post("/deliveries/<delivery_id>/replay")
def replay_delivery(delivery_id: str) -> Any:
    """Run a stored delivery through its source's adapter again (CONTRACT §10); ``by`` is the
    API key's label. 404 for an unknown, rejected or pruned delivery."""
    gw = gateway()
    who = gw.auth.require_api_key(request)
    from gateway.replay import delivery_id_of, replay

    return jsonify(replay(gw, delivery_id_of(delivery_id), by=who.name))


@bp.get("/endpoints")
def endpoints() -> Any:
    """Every forwarding endpoint's health (CONTRACT §9)."""
    gw = gateway()
    gw.auth.require_api_key(request)
    from gateway.messages import endpoint_status

    return jsonify({"endpoints": endpoint_status(gw.store, gw.config.endpoints)})


@bp.post("/endpoints/<name>/enable")
def enable_endpoint(name: str) -> Any:
    """Enable an endpoint a ``410 Gone`` disabled (CONTRACT §9): its pending messages flow again,
    in order; this process's senders are woken at once, the others' within the outbox interval."""
    gw = gateway()
    who = gw.auth.require_api_key(request)
    from gateway.messages import enable_endpoint as enable

    endpoint = enable(gw.store, gw.config.endpoints, name, by=who.name)
    for sender in current_app.extensions.get("forward_senders", {}).values():
        sender.wake.set()
    return jsonify({"endpoint": endpoint})


@bp.post("/messages/<message_id>/resend")
def resend_message(message_id: str) -> Any:
    """Send a forwarded message again; the sender loops are woken at once."""
    gw = gateway()
    who = gw.auth.require_api_key(request)
    from gateway.errors import NotFound
    from gateway.messages import resend

    if not message_id.isdigit() or len(message_id) > 18:
        raise NotFound(f"no message {message_id[:40]}", code="message_not_found")
    message = resend(gw.store, int(message_id), by=who.name)
    for sender in current_app.extensions.get("forward_senders", {}).values():
        sender.wake.set()
    return jsonify({"message": message})
