"""A real HTTP receiver on loopback for outbound calls (callbacks, details fetches, reporters).

Each request is recorded (method, path, headers, body) and answered by ``respond(request_no,
request)``, which returns (status, body) or (status, body, headers). Tests wait on the number of
requests with a deadline instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a real server's listen backlog: concurrent senders must not see dropped SYNs (a 1 s retransmit)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the receiver answered


Responder = Callable[[int, Received], tuple[Any, ...]]


@dataclass
class Receiver:
    respond: Responder = lambda n, req: (200, b"ok")
    requests: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _count: int = 0
    _server: ThreadingHTTPServer | None = None
    port: int = 0  # a fixed port, to stop the receiver (connections refused) and start it again there

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with receiver._cond:
                    receiver._count += 1
                    n = receiver._count
                answer = receiver.respond(n, req)  # outside the lock: a responder may block (a slow receiver)
                status, body, *rest = answer
                headers = rest[0] if rest else {}
                data = body if isinstance(body, bytes) else str(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                req.status = status
                with receiver._cond:
                    receiver.requests.append(req)
                    receiver._cond.notify_all()

            do_POST = _handle
            do_GET = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """Block until at least ``count`` requests were answered, or fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)} in {timeout}s")
                self._cond.wait(left)
            return list(self.requests)

    def wait_until(self, done: Callable[[list[Received]], bool], timeout: float = 30) -> list[Received]:
        """Block until ``done(requests answered so far)`` holds, or fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(list(self.requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver's condition did not hold in {timeout}s ({len(self.requests)} requests)")
                self._cond.wait(left)
            return list(self.requests)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
