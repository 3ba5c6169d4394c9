"""The baselines for bench.relay, run under the same gunicorn gevent worker as the gateway:

* WebSocket: the naive flask-sock relay, sockets in a set and a loop of ``ws.send`` per
  message; ``POST /broadcast`` sends its body to every socket.
* SSE: ``GET /sse`` is a generator per connection waiting on its own queue (a heartbeat
  comment when nothing came); ``POST /sse/broadcast`` puts the encoded event (its body as the
  ``data`` of an ``event: job``) into every queue.

``gunicorn -k gevent bench.naive_app:app``."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed


def create_app() -> Flask:
    """The naive relays: every connected socket (every stream) gets every broadcast."""
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": int(os.environ.get("NAIVE_PING_INTERVAL", "25"))}
    heartbeat = float(os.environ.get("NAIVE_SSE_HEARTBEAT", "15"))
    sock = Sock(app)
    sockets: set[Any] = set()
    streams: set[queue.Queue[bytes]] = set()

    @sock.route("/ws")
    def ws(conn: Any) -> None:
        sockets.add(conn)
        try:
            while conn.receive() is not None:
                pass
        except ConnectionClosed:
            pass
        finally:
            sockets.discard(conn)

    @app.post("/broadcast")
    def broadcast() -> Any:
        message = request.get_data(as_text=True)
        started = time.perf_counter()
        for conn in list(sockets):
            try:
                conn.send(message)
            except Exception:
                sockets.discard(conn)
        return {"sent": len(sockets), "seconds": time.perf_counter() - started}

    @app.get("/sse")
    def sse() -> Response:
        inbox: queue.Queue[bytes] = queue.Queue()
        streams.add(inbox)

        def events() -> Iterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    try:
                        yield inbox.get(timeout=heartbeat)
                    except queue.Empty:
                        yield b": keepalive\n\n"
            finally:
                streams.discard(inbox)

        return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/sse/broadcast")
    def sse_broadcast() -> Any:
        event = b"event: job\ndata: " + request.get_data() + b"\n\n"
        started = time.perf_counter()
        for inbox in list(streams):
            inbox.put(event)
        return {"sent": len(streams), "seconds": time.perf_counter() - started}

    @app.get("/count")
    def count() -> Any:
        return {"sockets": len(sockets), "streams": len(streams)}

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ok"}

    return app


app = create_app()
