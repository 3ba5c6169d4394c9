"""Baselines for the ingest and polling benchmarks, run under the same gunicorn settings as the gateway.

* ``bench.baselines:noop_app`` — a no-op Flask endpoint: ``POST /hook`` reads the body and
  returns 200; ``GET /job`` returns a small JSON body (the polling baseline).
* ``bench.baselines:naive_app`` — the handler the providers' docs show: verify with the SDK
  (``standardwebhooks.Webhook.verify``), insert the event, commit, 200. SQLAlchemy Core with
  the same pool settings as the gateway's engine; ``BENCH_NAIVE_DATABASE_URL`` names the
  database (the table is created on first use).
* ``bench.baselines:naive_pipeline_app`` — the naive webhook → WebSocket pipeline (bench.pipeline):
  the same verify-insert-commit handler, then a loop of ``ws.send`` over the sockets watching
  that job, in the same process. ``GET /ws`` (flask-sock) takes ``{"type": "subscribe", "job":
  <external id>}`` and answers ``{"type": "subscribed"}``; each frame is ``{"type": "job", "job":
  {...}}`` as the gateway's. One worker only: its sockets live in that process's memory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, Response, request


def create_noop() -> Flask:
    """The no-op endpoint: what Flask + gunicorn cost with no work at all."""
    app = Flask("noop")
    body = json.dumps({"id": "job_x", "state": "processing", "version": 3}).encode()

    @app.post("/hook")
    def hook() -> Any:
        request.get_data()
        return Response(b'{"status":"ok"}', 200, mimetype="application/json")

    @app.get("/job")
    def job() -> Any:
        return Response(body, 200, mimetype="application/json")

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ok"}

    return app


def naive_table() -> Any:
    """The naive handler's one table: an event per row, unique on the provider's event id."""
    from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, func

    return Table(
        "naive_events", MetaData(),
        Column("id", Integer, primary_key=True),
        Column("event_id", String(255), unique=True, nullable=False),
        Column("payload", JSON, nullable=False),
        Column("received_at", DateTime(timezone=True), server_default=func.now()),
    )


def create_naive_table(url: str) -> None:
    """Create the table before the workers start (two workers racing on CREATE TABLE would fail)."""
    from gateway.db import make_engine

    engine = make_engine(url)
    naive_table().metadata.create_all(engine)
    engine.dispose()


def naive_store() -> Any:
    """The docs' handler's work on the current request, as a function: SDK verify, insert the
    event, commit; the verified payload, or None for a bad signature. Its engine is made on
    first use (after the fork, in the worker)."""
    from sqlalchemy import insert
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from gateway.db import make_engine

    hook = Webhook(os.environ["WORKER_SECRETS"].split(",")[0])
    events = naive_table()
    state: dict[str, Any] = {}

    def store() -> Any:
        try:
            payload = hook.verify(request.get_data(), dict(request.headers))
        except WebhookVerificationError:
            return None
        if "engine" not in state:
            # psycopg's own default (prepared after 5 runs), as the docs' handler has it
            state["engine"] = make_engine(os.environ["BENCH_NAIVE_DATABASE_URL"], connect_args={"prepare_threshold": 5})
        with state["engine"].begin() as conn:
            conn.execute(insert(events).values(event_id=request.headers["webhook-id"], payload=payload))
        return payload

    return store


def create_naive() -> Flask:
    """The docs' handler: SDK verify, insert the event, commit."""
    app = Flask("naive")
    store = naive_store()

    @app.post("/hook")
    def receive() -> Any:
        if store() is None:
            return {"error": "bad signature"}, 401
        return {"status": "ok"}

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ok"}

    return app


def create_naive_pipeline() -> Flask:
    """The naive pipeline: SDK verify, insert, commit, then ``ws.send`` to the job's sockets."""
    from flask_sock import Sock
    from simple_websocket import ConnectionClosed

    app = Flask("naive_pipeline")
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": int(os.environ.get("NAIVE_PING_INTERVAL", "25"))}
    sock = Sock(app)
    store = naive_store()
    watchers: dict[str, set[Any]] = {}

    @sock.route("/ws")
    def ws(conn: Any) -> None:
        jobs: list[str] = []
        try:
            while (text := conn.receive()) is not None:
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("type") == "subscribe" and isinstance(msg.get("job"), str):
                    watchers.setdefault(msg["job"], set()).add(conn)
                    jobs.append(msg["job"])
                    conn.send(json.dumps({"type": "subscribed", "job": msg["job"]}))
        except ConnectionClosed:
            pass
        finally:
            for job in jobs:
                watchers.get(job, set()).discard(conn)

    @app.post("/hook")
    def receive() -> Any:
        payload = store()
        if payload is None:
            return {"error": "bad signature"}, 401
        job = str(payload.get("external_id"))
        message = json.dumps({"type": "job", "job": {"id": job, "external_id": job, "state": payload.get("state"),
                                                     "progress": payload.get("progress")}})
        for ws in list(watchers.get(job, ())):
            try:
                ws.send(message)
            except Exception:
                watchers[job].discard(ws)
        return {"status": "ok"}

    @app.get("/count")
    def count() -> Any:
        return {"sockets": sum(len(s) for s in watchers.values())}

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ok"}

    return app


def __getattr__(name: str) -> Any:
    # gunicorn imports ``bench.baselines:noop_app``; built on first access, no import-time app
    if name == "noop_app":
        return create_noop()
    if name == "naive_app":
        return create_naive()
    if name == "naive_pipeline_app":
        return create_naive_pipeline()
    raise AttributeError(name)
