"""A small fake of Render's Events API (``GET /v1/events/{id}``) on a free loopback port.

Tests start it, point a render source's ``api_base`` at ``fake.api_base``, load the events
it should answer with (``fake.events[id] = {...}``, e.g. ``adapters/fixtures/render/api_event_*``),
and can make it fail the next requests (``fake.fail_next(2, status=503)``) to exercise retries.
Every request is kept in ``fake.requests`` (path and Authorization header) for assertions::

    with FakeRender(api_key="rnd_test") as fake:
        fake.events["evj-1"] = {...}
        ...
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeRender:
    """Render's ``/v1/events/{id}``: 200 with the event, 404 unknown, 401 without the key."""

    api_key: str = "rnd_test_api_key_0123456789"
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    _failures: deque[int] = field(default_factory=deque)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (429 and 5xx are worth retrying)."""
        with self._lock:
            self._failures.extend([status] * count)

    def start(self) -> FakeRender:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                with fake._lock:
                    fake.requests.append((self.path, auth))
                    failure = fake._failures.popleft() if fake._failures else None
                if failure is not None:
                    return self._answer(failure, {"message": "unavailable"}, {"Retry-After": "1"})
                if auth != f"Bearer {fake.api_key}":
                    return self._answer(401, {"message": "unauthorized"})
                prefix = "/v1/events/"
                if not self.path.startswith(prefix):
                    return self._answer(404, {"message": "not found"})
                event = fake.events.get(self.path[len(prefix):])
                if event is None:
                    return self._answer(404, {"message": "event not found"})
                return self._answer(200, event)

            def _answer(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-render", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeRender:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
