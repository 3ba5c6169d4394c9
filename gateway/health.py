"""Operator endpoints: liveness, readiness (database reachable, migrations current), metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from gateway.app import gateway
from gateway.models import Job

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


def _expected_head() -> str | None:
    gw = gateway()
    head = gw.extras.get("alembic_head")
    if head is None:
        from gateway.migrate import head_revision

        head = gw.extras["alembic_head"] = head_revision()
    return head


@bp.get("/readyz")
def readyz() -> Any:
    gw = gateway()
    try:
        with gw.store.engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        return jsonify({"status": "unavailable", "database": "unreachable", "error": type(exc.__cause__ or exc).__name__}), 503, {"Retry-After": "5"}
    expected = _expected_head()
    if current != expected:
        return jsonify({"status": "unavailable", "database": "ok", "migrations": f"at {current}, expected {expected}: run `gateway migrate`"}), 503, {"Retry-After": "5"}
    return jsonify({"status": "ok", "database": "ok", "migrations": current})


@bp.get("/metrics")
def metrics() -> Any:
    gw = gateway()
    try:
        with gw.store.reading() as session:
            counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in ("queued", "processing", "complete", "failed"):
            gw.metrics.jobs_by_state.labels(state=state).set(counts.get(state, 0))
    except SQLAlchemyError:
        pass  # metrics still answer while the database is down
    return Response(gw.metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")
