"""``GET /``: the live demo (with ``[gateway] demo = true``) or a short landing page.

The demo page starts batches of simulated import jobs (``POST /demo/jobs``) and shows each
with the ``<job-status>`` element from ``/static/jobstatus.js``. The simulator
(``gateway.simulator``) registers them like an integrator's backend and drives them with
signed webhooks to this gateway's own ``/webhooks/demo``; its base URL is
``GATEWAY_DEMO_URL`` (``make serve`` sets it), else the ``public_url`` of ``[sources.demo]``
without its ``/webhooks/demo``. Never the request's ``Host``: a client could name any host, and
the simulator would post signed webhooks there. With neither, starting a batch is a 409.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, render_template, request

from gateway.context import Gateway, gateway
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.models import Job
from gateway.signals import job_retried
from gateway.simulator import MAX_BATCH, Simulator

DEMO_SOURCE = "demo"

bp = Blueprint("demo", __name__)


def init_app(app: Flask, gw: Gateway) -> None:
    """Serve ``/``; with ``demo = true`` also the simulator API and its retry hook."""
    app.register_blueprint(bp)
    if not gw.config.demo:
        return
    simulator = Simulator(gw, DEMO_SOURCE, demo_base_url(gw))
    gw.simulator = simulator

    def on_retry(_app: Flask, job: Job) -> None:
        if job.source == DEMO_SOURCE and DEMO_SOURCE in gw.sources and simulator.base_url:
            simulator.on_retry(job, simulator.base_url)

    job_retried.connect(on_retry, sender=app, weak=False)


def demo_base_url(gw: Gateway) -> str | None:
    """Where the simulator posts: ``GATEWAY_DEMO_URL``, else the demo source's ``public_url``
    without ``/webhooks/demo``; None when neither is configured."""
    configured = gw.config.env.get("GATEWAY_DEMO_URL")
    if configured:
        return configured.rstrip("/")
    source = gw.sources.get(DEMO_SOURCE)
    public, suffix = (source.config.public_url if source else None) or "", f"/webhooks/{DEMO_SOURCE}"
    return public[: -len(suffix)] if public.endswith(suffix) else None


def _base_url() -> str:
    base = gateway().simulator.base_url  # type: ignore[union-attr]  # the demo blueprint is registered only with a simulator
    if not base:
        raise Conflict("the demo needs GATEWAY_DEMO_URL (or a public_url for [sources.demo]) to know where to send its webhooks", code="demo_url_missing")
    return base


def _simulator() -> Simulator:
    gw = gateway()
    simulator = gw.simulator
    if simulator is None:
        raise NotFound("the demo is off: set [gateway] demo = true", code="demo_disabled")
    if DEMO_SOURCE not in gw.sources:
        raise Conflict(f"the demo needs a [sources.{DEMO_SOURCE}] with the standard adapter", code="demo_source_missing")
    return simulator


@bp.get("/")
def index() -> Any:
    gw = gateway()
    if not gw.config.demo:
        return render_template("index.html")
    return render_template("demo.html", support_email=gw.config.support_email, demo_ready=DEMO_SOURCE in gw.sources)


@bp.get("/favicon.ico")
def favicon() -> Any:
    """The gateway's icon (an SVG), where browsers look for it before reading the page."""
    response = current_app.send_static_file("favicon.svg")
    response.cache_control.max_age = 86400
    return response


@bp.post("/demo/jobs")
def start_jobs() -> Any:
    """Start a batch: ``{"count": 1-12, "tick": seconds between updates}`` → 201 ``{jobs: [{job, token}]}``."""
    simulator = _simulator()
    try:
        body = request.get_json(silent=True, force=True)
    except RecursionError:  # deeply nested JSON: silent=True only covers decode errors
        raise BadRequest("the body is nested too deeply", code="invalid_json") from None
    if body is None and not request.get_data():
        body = {}  # no body: the defaults
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    count = body.get("count", 6)
    tick = body.get("tick", 0.7)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
        raise BadRequest(f"count must be 1-{MAX_BATCH}", code="invalid_count")
    if isinstance(tick, bool) or not isinstance(tick, (int, float)) or not 0.05 <= tick <= 5:
        raise BadRequest("tick must be 0.05-5 seconds", code="invalid_tick")
    jobs = simulator.start_batch(count, float(tick), _base_url())
    return {"jobs": jobs}, 201


@bp.get("/demo/results/<job_id>")
def result(job_id: str) -> Any:
    """The page a complete demo job's result link points at."""
    _simulator()
    job = gateway().store.get_job(job_id)
    if job is None or job.source != DEMO_SOURCE or job.state != "complete":
        raise NotFound("no such demo result", code="result_not_found")
    return render_template("result.html", job=job)
