"""A gunicorn config module for browser tests: each request's arrival time (ms) and path, one
line each, appended to the file named by GATEWAY_TEST_REQUEST_LOG. The query string (which can
hold a job token) is never written. Used as ``gunicorn -c python:tests.browser.request_log``."""

from __future__ import annotations

import os
import time
from typing import Any


def pre_request(worker: Any, req: Any) -> None:
    """Called by gunicorn in the worker before the app sees the request."""
    path = os.environ.get("GATEWAY_TEST_REQUEST_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.time():.3f} {req.method} {req.path}\n")
