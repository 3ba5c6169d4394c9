"""The app factory. ``create_app(config)`` wires config, adapters, store, relay and blueprints.

Nothing happens at import time; every connection lives on the app's ``Gateway`` object in
``app.extensions["gateway"]``. Errors are mapped to HTTP here, once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from adapters.base import Adapter
from adapters.registry import Registry, load_registry
from gateway.auth import Auth
from gateway.background import Background
from gateway.config import COMMON_SOURCE_KEYS, Config, SourceConfig, did_you_mean, load_config
from gateway.db import make_engine
from gateway.errors import ConfigError, GatewayError, Unavailable
from gateway.logs import setup_logging
from gateway.metrics import Metrics
from gateway.store import Store

log = logging.getLogger("gateway")


@dataclass
class Source:
    """A configured source with its adapter instance."""

    config: SourceConfig
    adapter: Adapter

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Gateway:
    """Everything a request handler needs, owned by one app."""

    config: Config
    registry: Registry
    sources: dict[str, Source]
    store: Store
    auth: Auth
    metrics: Metrics
    relay: Any = None
    background: Background = field(default_factory=Background)
    extras: dict[str, Any] = field(default_factory=dict)


def gateway() -> Gateway:
    """The current app's Gateway."""
    return current_app.extensions["gateway"]


def build_sources(config: Config, registry: Registry) -> dict[str, Source]:
    """Instantiate each source's adapter; an unknown or broken adapter is a config error naming the key."""
    sources = {}
    for name, sc in config.sources.items():
        cls = registry.get(sc.adapter)
        if cls is None:
            why = registry.broken.get(sc.adapter)
            installed = ", ".join(sorted(registry.adapters)) or "none"
            hint = did_you_mean(sc.adapter, registry.adapters)
            detail = f"failed to load ({why})" if why else f"not installed{hint} (installed: {installed})"
            raise ConfigError(f"sources.{name}.adapter: adapter {sc.adapter!r} {detail}")
        options = dict(sc.options)
        for key in ("public_url", "api_base", "api_key_env"):
            if getattr(sc, key):
                options[key] = getattr(sc, key)
        allowed = set(cls.options_schema) | {"public_url", "api_base", "api_key_env"}
        for key in sc.options:
            if key not in allowed:
                hint = did_you_mean(key, allowed | set(COMMON_SOURCE_KEYS))
                raise ConfigError(f"sources.{name}.{key}: unknown setting for adapter {sc.adapter!r}{hint}")
        try:
            adapter = cls(options, tolerance=config.signature_tolerance)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"sources.{name}: adapter {sc.adapter!r} rejected its options: {exc}") from None
        sources[name] = Source(sc, adapter)
    return sources


def create_app(config: Config | None = None, *, background: bool = True) -> Flask:
    """A configured gateway application; ``config`` defaults to GATEWAY_CONFIG and the environment.

    ``background=False`` leaves periodic work (resync, outbox, watchdog) to the caller: tests
    drive it by hand through ``app.extensions['gateway'].background.tasks``."""
    setup_logging()
    config = config or load_config()
    registry = load_registry()
    sources = build_sources(config, registry)
    engine = make_engine(config.database_url)

    app = Flask(__name__)
    # "/api/jobs/%2F/trace" is a 404 for an id that cannot exist, not a 308 to another URL
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = max(config.max_body_bytes, 64 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = Store(engine)
    gw = Gateway(
        config=config,
        registry=registry,
        sources=sources,
        store=store,
        auth=Auth(config.secret_key, config.api_keys, config.token_ttl),
        metrics=Metrics(),
    )
    app.extensions["gateway"] = gw

    from gateway import api, health, ingest

    app.register_blueprint(ingest.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    from gateway import limits

    limits.init_app(app, gw)
    try:
        from gateway import relay
    except ImportError:
        relay = None  # type: ignore[assignment]
    if relay is not None and hasattr(relay, "init_app"):
        relay.init_app(app, gw)
    try:
        from gateway import demo
    except ImportError:
        demo = None  # type: ignore[assignment]
    if demo is not None and hasattr(demo, "init_app"):
        demo.init_app(app, gw)
    from gateway import outbox, watchdog

    outbox.init_app(app, gw)
    watchdog.init_app(app, gw)
    _install_request_hooks(app)
    _install_error_handlers(app)
    from gateway import fastpoll

    fastpoll.init_app(app, gw)
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


def request_id_of(environ: dict[str, Any]) -> str:
    """The client's ``X-Request-ID`` when it is usable (1-64 printable characters), else a new one."""
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    return incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else os.urandom(16).hex()


def finish_headers(headers: MutableMapping[str, str], req: Request, request_id: str, allowed_origins: Collection[str]) -> None:
    """What every response gets: its request id, and CORS headers for an allowed origin on ``/api/``
    (the ``after_request`` hook, and the conditional polls answered before Flask, fastpoll.py)."""
    headers["X-Request-ID"] = request_id
    origin = req.environ.get("HTTP_ORIGIN")
    if origin and req.path.startswith("/api/") and origin_allowed_for(origin, allowed_origins, req.host_url):
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = "ETag, X-Request-ID, Retry-After"
        headers["Vary"] = "Origin"
        if req.method == "OPTIONS":  # the preflight for Authorization / If-None-Match
            headers["Access-Control-Allow-Methods"] = "GET, POST"
            headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-None-Match, Last-Event-ID, X-Request-ID"
            headers["Access-Control-Max-Age"] = "600"


def origin_allowed(origin: str) -> bool:
    """A browser origin may use the push and API endpoints: configured in allowed_origins, or the
    gateway's own origin (its demo page and any page it serves are never foreign)."""
    return origin_allowed_for(origin, gateway().config.allowed_origins, request.host_url)


def origin_allowed_for(origin: str, allowed_origins: Collection[str], host_url: str) -> bool:
    """``origin_allowed`` outside a Flask request: the configured origins and this request's host URL."""
    return origin in allowed_origins or origin == host_url.rstrip("/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Any:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None  # type: ignore[attr-defined]
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
