"""gunicorn settings for ``gateway serve`` and the test servers (``gunicorn -c <this file>``).

* Metrics across workers: prometheus-client's multiprocess mode needs PROMETHEUS_MULTIPROC_DIR
  set before any worker creates a metric, and the directory empty at start. ``on_starting``
  (the master, before the first fork) sets it to a fresh directory, or empties the one the
  operator set; ``child_exit`` marks a dead worker's live gauges gone.
* Deploys: ``worker_exit`` tells the leaving worker's WebSocket watchers (1001) and SSE
  streams to reconnect elsewhere, once the requests in flight are finished.
* Logs: gunicorn's own lines in the gateway's format on stderr; the access log, when enabled
  (GATEWAY_ACCESS_LOG=1), records the path without the query string, so ``?token=`` never
  reaches it. ``GatewayLogger`` (accesslog.py) builds the access line only when it is written.
* Errors gunicorn answers itself (a malformed request line, headers too large, a bad chunk):
  the JSON error shape of every other answer, not gunicorn's HTML page (``write_json_error``).

The master imports nothing of the app and not psycopg (it decides at import time whether
gevent patched ``select``; the workers patch first, then load ``wsgi:app``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Any

from gunicorn import util as gunicorn_util

from gateway.accesslog import GatewayLogger
from gateway.logs import ACCESS_LOG_FORMAT, gunicorn_logconfig

_OWNED_DIR = "GATEWAY_OWNS_PROMETHEUS_DIR"

access_log_format = ACCESS_LOG_FORMAT
logger_class = GatewayLogger
logconfig_dict = gunicorn_logconfig(bool(os.environ.get("GATEWAY_ACCESS_LOG")))


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` as ``{"error": {"code", "message"}}``. The message does not
    echo what gunicorn could not parse (it may hold a credential or markup)."""
    code = reason.lower().replace(" ", "_") or "bad_request"
    body = json.dumps({"error": {"code": code, "message": f"{reason}: the server could not read this request"}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers call util.write_error for what they answer before the app runs; the workers
# are forked from the master that read this file, so the replacement reaches every one
gunicorn_util.write_error = write_json_error


def on_starting(server: Any) -> None:
    """Give the workers a clean multiprocess metrics directory, and tell them how many they are
    (``GATEWAY_WORKERS``: per-worker rate limits take their share, gateway/limits.py)."""
    os.environ["GATEWAY_WORKERS"] = str(server.cfg.workers)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[_OWNED_DIR] = path
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    server.log.info("metrics directory %s", path)


def worker_exit(server: Any, worker: Any) -> None:
    """A worker leaves (SIGTERM, a HUP's rolling restart, max_requests) after finishing the
    requests in flight (webhooks included, within graceful_timeout): its WebSocket watchers get
    a 1001 close and its SSE streams end, so every tab reconnects to a live worker at once."""
    app = getattr(worker, "wsgi", None)
    gw = getattr(app, "extensions", {}).get("gateway") if app is not None else None
    relay = getattr(gw, "relay", None)
    if relay is not None:
        told = relay.going_away()
        server.log.info("told %d watchers the worker is going away", told)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges (connections, subscriptions) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this master made."""
    owned = os.environ.get(_OWNED_DIR)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
