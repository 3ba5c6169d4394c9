"""gunicorn settings for the browser tests: the gateway's own (``gateway/gunicorn_conf.py``) plus
a request log of each request's arrival time (ms) and path, one line each, appended to the file
named by GATEWAY_TEST_REQUEST_LOG. Arrival, not completion, so a WebSocket or SSE connection is
logged when it opens. The query string (which can hold a job token) is never written.
Used as ``gunicorn -c python:tests.browser.request_log``."""

from __future__ import annotations

import os
import time
from typing import Any

from gateway.gunicorn_conf import *  # noqa: F403 - everything `gateway serve` runs with


def pre_request(worker: Any, req: Any) -> None:
    """Called by gunicorn in the worker before the app sees the request."""
    path = os.environ.get("GATEWAY_TEST_REQUEST_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.time():.3f} {req.method} {req.path}\n")
