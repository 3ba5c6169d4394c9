"""The app factory. ``create_app(config)`` wires config, adapters, store, relay and blueprints.

Nothing happens at import time; every connection lives on the app's ``Gateway`` object
(gateway/context.py) in ``app.extensions["gateway"]``. Errors are mapped to HTTP here, once.
No module of the gateway imports this one: only wsgi.py, the CLI and tests do.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, g, request
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from adapters.registry import load_registry
from gateway import api, demo, fastpoll, forward_send, health, ingest, limits, outbox, watchdog
from gateway import console as console_pages
from gateway.auth import Auth
from gateway.config import Config, load_config, secret_values
from gateway.context import Gateway, gateway
from gateway.db import make_engine
from gateway.errors import GatewayError, Unavailable
from gateway.http import error_response, finish_headers, guard_input, request_id_of
from gateway.logs import register_secrets, setup_logging
from gateway.metrics import Metrics
from gateway.relay import install as relay
from gateway.services import build_sources
from gateway.store import Store

log = logging.getLogger("gateway")


def create_app(config: Config | None = None, *, background: bool = True) -> Flask:
    """A configured gateway application; ``config`` defaults to GATEWAY_CONFIG and the environment.

    ``background=False`` leaves periodic work (resync, outbox, watchdog) to the caller: tests
    drive it by hand through ``app.extensions['gateway'].background.tasks``."""
    setup_logging()
    config = config or load_config()
    register_secrets(secret_values(config))
    registry = load_registry()
    sources = build_sources(config, registry)
    engine = make_engine(config.database_url)

    app = Flask(__name__)
    # "/api/jobs/%2F/trace" is a 404 for an id that cannot exist, not a 308 to another URL
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = max(config.max_body_bytes, 64 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # typed as JSONProvider; the default provider has sort_keys
    store = Store(engine, group_window_ms=config.ingest_batch_window_ms, prepare_statements=config.prepare_statements)
    gw = Gateway(
        config=config,
        registry=registry,
        sources=sources,
        store=store,
        auth=Auth(config.secret_key, config.api_keys, config.token_ttl),
        metrics=Metrics(),
    )
    app.extensions["gateway"] = gw
    store.group.on_batch = gw.metrics.ingest_batch.observe

    app.register_blueprint(ingest.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(console_pages.bp)
    gw.limits = limits.init_app(app, gw)
    gw.relay = relay.init_app(app, gw)
    demo.init_app(app, gw)
    gw.outbox = outbox.init_app(app, gw)
    app.extensions["forward_senders"] = forward_send.install(gw, gw.relay)
    gw.watchdog = watchdog.init_app(app, gw, gw.outbox.wake.set)
    _install_request_hooks(app)
    _install_error_handlers(app)
    app.wsgi_app = guard_input(app.wsgi_app)  # type: ignore[method-assign]  # WSGI middleware replaces the method, as Flask's docs do
    fastpoll.init_app(app, gw)
    gw.background.on_stop.append(engine.dispose)  # last: the pool's idle connections close with the app
    if background:
        gw.background.start()
    return app


def _install_request_hooks(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.request_id = request_id_of(request.environ)

    @app.after_request
    def _finish(response: Any) -> Any:
        finish_headers(response.headers, request, g.get("request_id", ""), gateway().config.allowed_origins)
        return response


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Any:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None  # type: ignore[attr-defined]  # only MethodNotAllowed has it, checked first
        return error_response(exc.code or 500, code, exc.description or exc.name, headers)

    @app.errorhandler(DataError)
    def _unstorable(exc: DataError) -> Any:
        # a value the database refuses (a NUL character in PostgreSQL text or jsonb): the client's input
        log.info("unstorable value refused", extra={"error": type(exc.orig).__name__, "request_id": g.get("request_id")})
        return error_response(400, "unstorable_value", "the request holds a value the database cannot store (such as a NUL character)")

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database_down(exc: SQLAlchemyError) -> Any:
        log.warning("database unavailable", extra={"error": type(exc.__cause__ or exc).__name__, "request_id": g.get("request_id")})
        err = Unavailable("the database is unavailable; retry later")
        return error_response(err.status, err.code, err.message, err.headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"request_id": g.get("request_id"), "path": request.path})
        return error_response(500, "internal", "internal error; the request id is in X-Request-ID")
