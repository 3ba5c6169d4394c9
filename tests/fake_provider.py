"""A fake provider API on a free loopback port, answering status reads with the documented
response shapes (``adapters/fixtures/<provider>/api``): a real HTTP server in a thread.

Tests point a source's ``api_base`` at ``fake.base + <the default base's path>``, set
``fake.answers[path] = (status, body)``, and may make it misbehave: ``fake.mode = "429"`` /
``"500"`` (every request, with ``Retry-After``) or ``"hang"`` (hold every request until
``fake.release()``). Every request is kept in ``fake.requests`` as (path, Authorization)::

    with FakeProviderAPI() as fake:
        fake.answers["/v1/predictions/abc"] = (200, {...})
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeProviderAPI:
    """GET answers by path; 404 for unknown paths; ``mode`` for failures."""

    def __init__(self, retry_after: int = 30) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.mode = "ok"
        self.retry_after = retry_after
        self.arrived = threading.Event()  # set on every request: tests wait on it, never sleep
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def release(self) -> None:
        """Let hung requests go (they then answer 503)."""
        self._release.set()

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeProviderAPI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append((self.path, self.headers.get("Authorization")))
                fake.arrived.set()
                if fake.mode == "hang":
                    fake._release.wait(30)
                    return self._answer(503, {"error": "was hanging"})
                if fake.mode in ("429", "500"):
                    return self._answer(int(fake.mode), {"error": "busy"}, {"Retry-After": str(fake.retry_after)})
                status, body = fake.answers.get(self.path, (404, {"error": "not found"}))
                self._answer(status, body)

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout under test)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeProviderAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
