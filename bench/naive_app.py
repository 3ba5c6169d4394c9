"""The baseline for bench.relay: the naive flask-sock relay (sockets in a set, a loop of
``ws.send`` per message), run under the same gunicorn gevent worker as the gateway.

``gunicorn -k gevent bench.naive_app:app``; ``POST /broadcast`` sends its body to every socket."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed


def create_app() -> Flask:
    """The naive relay: every connected socket gets every broadcast."""
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": int(os.environ.get("NAIVE_PING_INTERVAL", "25"))}
    sock = Sock(app)
    sockets: set[Any] = set()

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
            except Exception:  # noqa: BLE001 - a closed socket
                sockets.discard(conn)
        return {"sent": len(sockets), "seconds": time.perf_counter() - started}

    @app.get("/count")
    def count() -> Any:
        return {"sockets": len(sockets)}

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ok"}

    return app


app = create_app()
