"""Operator endpoints: liveness, readiness (database reachable, migrations current), metrics.

``/healthz`` touches nothing but the process. ``/readyz`` runs one indexed read of
``alembic_version`` and compares it with the head revision read once, when the blueprint is
registered, so a probe costs a few milliseconds. ``/metrics`` samples jobs by state at scrape,
at most once per ``metrics_cache_seconds``, and may require a bearer token.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from gateway.context import gateway
from gateway.errors import Unauthorized
from gateway.models import Job

bp = Blueprint("health", __name__)

_STATES = ("queued", "processing", "complete", "failed")


def _read_head(state: BlueprintSetupState) -> None:
    """The migration head the code expects, read from alembic/ once per app (not per probe)."""
    from gateway.migrate import head_revision

    gw = state.app.extensions.get("gateway")
    if gw is not None and gw.alembic_head is None:
        gw.alembic_head = head_revision()


bp.record_once(_read_head)


@bp.get("/healthz")
def healthz() -> Any:
    """The process is alive and serving requests."""
    return jsonify({"status": "ok"})


def _unready(body: dict[str, Any]) -> Any:
    return jsonify({"status": "unavailable", **body}), 503, {"Retry-After": "5", "Cache-Control": "no-store"}


@bp.get("/readyz")
def readyz() -> Any:
    """Ready when the database answers and its schema is at the code's migration head."""
    gw = gateway()
    started = time.perf_counter()
    try:
        with gw.store.engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        return _unready({"database": "unreachable", "error": type(exc.__cause__ or exc).__name__})
    ms = round((time.perf_counter() - started) * 1000, 2)
    expected = gw.alembic_head
    if expected is None:
        from gateway.migrate import head_revision

        expected = gw.alembic_head = head_revision()
    if current != expected:
        return _unready({"database": "ok", "migrations": f"at {current}, expected {expected}: run `gateway migrate`"})
    return jsonify({"status": "ok", "database": "ok", "migrations": current, "database_ms": ms}), 200, {"Cache-Control": "no-store"}


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus text: this process's metrics, merged over every worker under gunicorn. With
    ``GATEWAY_METRICS_TOKEN`` set, only for ``Authorization: Bearer <that token>``. Jobs by state
    (and each forwarding endpoint's oldest pending message) are counted (a GROUP BY over all jobs)
    at most once per ``metrics_cache_seconds`` per worker,
    so a fast scraper cannot turn into database load."""
    gw = gateway()
    if gw.config.metrics_token:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), gw.config.metrics_token.encode()):
            raise Unauthorized("/metrics needs Authorization: Bearer <metrics token>")
    now = time.monotonic()
    if now - gw.metrics.jobs_sampled_at >= gw.config.metrics_cache_seconds:
        try:
            with gw.store.reading() as session:
                counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            for state in _STATES:
                gw.metrics.jobs_by_state.labels(state=state).set(counts.get(state, 0))
            if gw.config.endpoints:
                from gateway.messages import sample_oldest_pending

                sample_oldest_pending(gw.store, gw.config.endpoints, gw.metrics.forward_oldest_pending)
            gw.metrics.jobs_sampled_at = now
        except SQLAlchemyError:
            pass  # metrics still answer while the database is down
    return Response(gw.metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")
