"""Abuse limits: request rates per source and per client address, open connections per client
address, and a deadline for reading a request body.

Rates are token buckets. With ``rate_limit_store = "redis"`` (the default when ``redis_url`` is
set in the file or the bus is Redis) every worker and instance spends from one bucket in Redis
(``limits_redis.py``: one atomic Lua script per take). Otherwise they are held **in each worker
process** and each of the N workers gunicorn runs gets 1/N of every configured rate and burst
(``GATEWAY_WORKERS``, set by gunicorn_conf.py), so the whole server allows about the configured
rate; one address's requests are not always spread evenly over the workers, so it may be
refused a little earlier. Several instances behind a load balancer each allow the configured
rate. A refused request gets 429 with ``Retry-After`` and the usual JSON error.

- ``POST /webhooks/<source>``: ``rate_limit_webhooks_per_address`` before anything is read,
  ``rate_limit_webhooks_per_source`` only for deliveries whose signature verified (requests per
  second; bursts up to twice that), so unsigned posts cannot spend a provider's budget.
- Browser endpoints (reading, streaming or retrying one job with its token, ``/ws``, the
  demo page): ``rate_limit_public_per_address``. A request carrying an integrator API key is
  not a browser and is not counted.
- ``max_connections_per_address``: at most that many long-lived connections (``/ws``, SSE
  streams) per client address per process, counted by a ``ConnectionCounter`` from the request
  until the connection closes; one more is refused with 429 ``too_many_connections``.
- ``body_timeout``: the seconds a client has to send its whole body. Under gunicorn's gevent
  worker a slow client only holds a greenlet, never a worker, but without a deadline it would
  hold it forever; past the deadline the request ends with 408 and the connection closes.
  (Slow *headers* are cut by gunicorn's ``--keep-alive`` timeout, which covers the header read.)

Setting a rate to 0 turns that limit off.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, g, request
from werkzeug.wrappers import Request

from gateway.errors import RateLimited, RequestTimeout
from gateway.services import Services

MAX_KEYS = 50_000  # buckets kept per limiter; the least recently used are forgotten first
PUBLIC_PATHS = re.compile(r"^/(?:api/jobs/[^/]+(?:/stream|/retry)?|ws|static/.*|demo/.*)?$")
LONG_LIVED_PATHS = re.compile(r"^/(?:api/jobs/[^/]+/stream|ws)$")  # count against max_connections_per_address


class RateLimiter:
    """Token buckets by key: ``rate`` tokens a second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else 2 * rate)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token for ``key``; 0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, seen = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - seen) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
            return wait

    def check(self, key: str, what: str) -> None:
        """Raise RateLimited (429, Retry-After) when ``key`` is over its rate."""
        wait = self.take(key)
        if wait > 0:
            raise RateLimited(f"too many requests {what}; retry after the Retry-After seconds",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})


class ConnectionCounter:
    """Open long-lived connections per key (client address), capped at ``limit`` (0: no cap)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        """Count one more connection for ``key``; False (and nothing counted) when at the cap."""
        with self._lock:
            n = self._open.get(key, 0)
            if self.limit and n >= self.limit:
                return False
            self._open[key] = n + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold a connection slot for the block; RateLimited (429) when the address is at its cap."""
        if not self.acquire(key):
            raise RateLimited("too many open connections from this address", code="too_many_connections", headers={"Retry-After": "5"})
        try:
            yield
        finally:
            self.release(key)


class _DeadlineInput:
    """``wsgi.input`` whose reads must all finish before a deadline (gevent only: a timer
    interrupts a blocked read; elsewhere reads are plain)."""

    def __init__(self, stream: Any, deadline: float):
        self._stream = stream
        self._deadline = deadline

    def _call(self, name: str, *args: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("request body not received in time")
        import gevent

        with gevent.Timeout(remaining, RequestTimeout("request body not received in time")):
            return getattr(self._stream, name)(*args)

    def read(self, *args: Any) -> bytes:
        return bytes(self._call("read", *args))

    def readline(self, *args: Any) -> bytes:
        return bytes(self._call("readline", *args))

    def readlines(self, *args: Any) -> list[bytes]:
        return list(self._call("readlines", *args))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


CONSOLE_WRONG_KEYS_PER_MINUTE = 5


class Limits:
    """The app's limiters, built from the configuration; see the module docstring."""

    def __init__(self, config: Any):
        self.shared = config.rate_limit_store == "redis"
        # without a shared store each worker gets its share of the configured rates (gunicorn_conf
        # tells the workers how many they are); with Redis every worker spends from one bucket
        self.workers = 1 if self.shared else max(1, int(config.env.get("GATEWAY_WORKERS") or 1))
        client = None
        if self.shared:
            from gateway.limits_redis import client_for

            client = client_for(config.redis_url)

        def make(name: str, rate: float, burst: float | None = None) -> Any:
            if client is not None:
                from gateway.limits_redis import RedisRateLimiter

                return RedisRateLimiter(client, f"gateway:rate:{name}:", rate, burst)
            return RateLimiter(rate / self.workers, None if burst is None else burst / self.workers)

        self.webhooks_per_source = make("source", config.rate_limit_webhooks_per_source)
        self.webhooks_per_address = make("webhook-addr", config.rate_limit_webhooks_per_address)
        self.public_per_address = make("public-addr", config.rate_limit_public_per_address)
        self.connections = ConnectionCounter(config.max_connections_per_address)
        # wrong API keys at the console's sign-in, per address (gateway/console/auth.py)
        self.console_wrong_keys = make("console-key", CONSOLE_WRONG_KEYS_PER_MINUTE / 60, CONSOLE_WRONG_KEYS_PER_MINUTE)
        # not a request limit: how many refused deliveries per source a minute are stored (ingest.py)
        per_minute = config.rejected_records_per_minute
        self.rejected_records = make("rejected", per_minute / 60, per_minute)
        self.body_timeout = config.body_timeout


def client_address(req: Request | None = None) -> str:
    """The peer's address as the server saw it (configure the proxy's ProxyFix upstream if any)."""
    return (req or request).remote_addr or "unknown"


def public_request_allowed(gw: Services, limits: Limits, req: Request) -> bool:
    """For a request on a browser endpoint answered before Flask (fastpoll.py): spend its token
    as the ``before_request`` hook would, True if allowed. When False, nothing was spent and
    the request goes on to Flask, whose hook answers 429."""
    if _is_api_key(gw, req):
        return True
    return bool(limits.public_per_address.take("addr:" + client_address(req)) == 0)


def init_app(app: Flask, gw: Services) -> Limits:
    """The app's limiters, attached to it: checked before each request, body deadline in the WSGI layer."""
    limits = Limits(gw.config)

    @app.before_request
    def _limit() -> None:
        path = request.path
        address = client_address()
        if path.startswith("/webhooks/") and request.method == "POST":
            # the per-source budget is charged only once a delivery verified (charge_source)
            source = path[len("/webhooks/"):]
            _counted(gw, source, lambda: limits.webhooks_per_address.check("addr:" + address, "from this address"))
        elif PUBLIC_PATHS.match(path) and not _is_api_key(gw, request):
            limits.public_per_address.check("addr:" + address, "from this address")
        if request.method == "GET" and LONG_LIVED_PATHS.match(path):
            if not limits.connections.acquire(address):
                raise RateLimited("too many open connections from this address", code="too_many_connections", headers={"Retry-After": "5"})
            g.connection_slot = address
            g.release_connection_slot = functools.partial(limits.connections.release, address)

    @app.after_request
    def _hold_slot(response: Any) -> Any:
        # an SSE stream outlives the view: its slot lasts until the server closes the response
        # iterable. A WebSocket either runs inside the view (teardown frees its slot) or takes
        # the slot with it when it leaves the request (hand_over_connection_slot).
        if request.path != "/ws":
            address = g.pop("connection_slot", None)
            if address is not None:
                response.call_on_close(lambda: limits.connections.release(address))
        return response

    @app.teardown_request
    def _release_slot(_exc: BaseException | None) -> None:
        address = g.pop("connection_slot", None)
        if address is not None:
            limits.connections.release(address)

    if limits.body_timeout and _gevent_patched():
        inner = app.wsgi_app
        seconds = float(limits.body_timeout)

        def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH"):
                environ["wsgi.input"] = _DeadlineInput(environ["wsgi.input"], time.monotonic() + seconds)
            return inner(environ, start_response)

        app.wsgi_app = wsgi_app  # type: ignore[method-assign]  # WSGI middleware replaces the method, as Flask's docs do
    return limits


def hand_over_connection_slot() -> Callable[[], None] | None:
    """Take this request's long-lived connection slot out of the request: the connection that
    outlives it calls the returned function when it closes. None when no slot is held."""
    if g.pop("connection_slot", None) is None:
        return None
    release: Callable[[], None] = g.pop("release_connection_slot")
    return release


def charge_source(gw: Services, limits: Limits, source: str) -> None:
    """Spend one of ``source``'s tokens for a delivery whose signature verified; RateLimited (429,
    counted) when over. Unsigned junk never reaches here, so it cannot spend a provider's budget."""
    _counted(gw, source, lambda: limits.webhooks_per_source.check("source:" + source, "for this source"))


def _counted(gw: Services, source: str, check: Callable[[], None]) -> None:
    try:
        check()
    except RateLimited:
        gw.metrics.webhooks.labels(source=source if source in gw.sources else "_unknown", outcome="rate_limited").inc()
        raise


def _is_api_key(gw: Services, req: Request) -> bool:
    header = req.headers.get("Authorization", "")
    return header[:7].lower() == "bearer " and gw.auth.is_api_key(header[7:].strip())
