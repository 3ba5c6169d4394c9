"""Conditional polls of an unchanged job, answered before Flask.

``GET /api/jobs/<id>`` with ``If-None-Match`` is most of a gateway's traffic, and usually the
answer is a 304 this process can give from memory (relay/fresh.py). Flask's request context,
URL matching and hooks would cost about as much as the rest of that request together, so this
WSGI layer answers such a poll itself, with the same checks in the same functions as the Flask
path: the job token (``Auth.require_job``), the browser rate limit
(``limits.public_request_allowed``), ``Relay.fresh_etag``, the poll metrics, and the request id
and CORS headers (``http.finish_headers``).

It only ever answers that 304. Any other request, and any poll it cannot answer so (no or a
stale ``If-None-Match``, ``?wait=``, a credential problem, the address over its rate, the
version not provably current), goes on to Flask untouched, where every error and every other
answer is made.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.wrappers import Request

from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.http import finish_headers, not_modified_headers, request_id_of, tag_matches
from gateway.ids import JOB_ID_RE
from gateway.limits import public_request_allowed

log = logging.getLogger("gateway.api")

_JOB_PATH = re.compile(r"/api/jobs/([^/]+)")  # the route of ``api.get_job``
NOT_MODIFIED = "304 NOT MODIFIED"  # as werkzeug words it

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastPolls:
    """The WSGI app in front of Flask's: a 304 from memory, or Flask (``inner``)."""

    def __init__(self, gw: Gateway, inner: WSGIApp):
        self.gw = gw
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("HTTP_IF_NONE_MATCH"):
            match = _JOB_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                try:
                    headers = self.not_modified(Request(environ), match.group(1))
                except Exception:  # never worse than Flask: it answers, and maps any error once
                    log.exception("conditional poll not answered before Flask")
                    headers = None
                if headers is not None:
                    start_response(NOT_MODIFIED, list(headers.items()))
                    return []
        return self.inner(environ, start_response)

    def not_modified(self, req: Request, job_id: str) -> dict[str, str] | None:
        """The headers of the 304 for an unchanged job this process provably knows, or None (ask Flask)."""
        gw = self.gw
        if not JOB_ID_RE.match(job_id) or (req.environ.get("QUERY_STRING") and "wait" in req.args):
            return None
        try:
            gw.auth.require_job(req, job_id, "read")
        except GatewayError:
            return None
        tag = gw.relay.fresh_etag(job_id)
        if tag is None or not tag_matches(req.headers.get("If-None-Match"), tag) or not public_request_allowed(gw, gw.limits, req):
            return None
        gw.metrics.count_poll("poll", "304")
        gw.relay.answered_from_memory()
        headers = not_modified_headers(tag)
        finish_headers(headers, req, request_id_of(req.environ), gw.config.allowed_origins)
        return headers


def init_app(app: Flask, gw: Gateway) -> None:
    """Put the fast path in front of the app (outermost, so nothing of Flask runs for it)."""
    app.wsgi_app = FastPolls(gw, app.wsgi_app)  # type: ignore[method-assign]  # WSGI middleware replaces the method, as Flask's docs do
