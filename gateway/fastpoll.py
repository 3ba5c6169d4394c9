"""Polls answered before Flask.

``GET /api/jobs/<id>`` is most of a gateway's traffic, and usually this process can answer it
from memory (gateway/polls.py): a 304 for an unchanged job, or a 200 with the JSON it holds.
Flask's request context, URL matching and hooks would cost about as much as the rest of that
request together, so this WSGI layer answers such a poll itself, with the same checks in the
same functions as the Flask path: the job token (``Auth.require_job``), the browser rate limit
(``limits.public_request_allowed``), ``polls.from_memory`` with its metrics, and the request id
and CORS headers (``http.finish_headers``).

It only ever answers from memory, and only on the route of ``api.get_job`` (its path is taken
from Flask's URL map). Any other request, and any poll it cannot answer so (``?wait=``, a
credential problem, the address over its rate, the job not provably known), goes on to Flask
untouched, where every error and every other answer is made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.http import finish_headers, request_id_of
from gateway.ids import JOB_ID_RE
from gateway.limits import public_request_allowed
from gateway.polls import ASKED_MEMORY, Answer, from_memory

log = logging.getLogger("gateway.api")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ROUTE = "api.get_job"


class JobPath:
    """Which paths the route of ``api.get_job`` matches: its rule's text around ``<job_id>``
    (the default converter: one path segment), so no second pattern is written by hand."""

    def __init__(self, rule: str):
        self.prefix, found, self.suffix = rule.partition("<job_id>")
        if not found or "<" in self.prefix + self.suffix:
            raise ValueError(f"{ROUTE}'s rule {rule!r} is not <prefix><job_id><suffix>")

    def job_id(self, path: str) -> str | None:
        """The job id ``path`` names on the route, or None when it is not the route's."""
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        job_id = path[len(self.prefix) : len(path) - len(self.suffix)]
        return job_id if job_id and "/" not in job_id else None


class FastPolls:
    """The WSGI app in front of Flask's: a poll answered from memory, or Flask (``inner``)."""

    def __init__(self, gw: Gateway, inner: WSGIApp, path: JobPath):
        self.gw = gw
        self.inner = inner
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET":
            job_id = self.path.job_id(environ.get("PATH_INFO", ""))
            if job_id is not None:
                try:
                    answered = self.answer(Request(environ), job_id)
                except Exception:  # never worse than Flask: it answers, and maps any error once
                    log.exception("poll not answered before Flask")
                    answered = None
                if answered is not None:
                    answer, headers = answered
                    start_response(f"{answer.status} {HTTP_STATUS_CODES[answer.status].upper()}", list(headers.items()))
                    return [answer.body] if answer.body else []
        return self.inner(environ, start_response)

    def answer(self, req: Request, job_id: str) -> tuple[Answer, dict[str, str]] | None:
        """The answer from memory and its headers, or None (ask Flask)."""
        gw = self.gw
        if not JOB_ID_RE.match(job_id) or (req.environ.get("QUERY_STRING") and "wait" in req.args):
            return None
        if gw.relay.remembered(job_id) is None:
            return None  # memory knows nothing of it: no need to check the credential twice
        try:
            gw.auth.require_job(req, job_id, "read")
        except GatewayError:
            return None
        answer = from_memory(gw, job_id, req.headers.get("If-None-Match"), lambda: public_request_allowed(gw, gw.limits, req))
        req.environ[ASKED_MEMORY] = True
        if answer is None:
            return None
        headers = answer.headers()
        finish_headers(headers, req, request_id_of(req.environ), gw.config.allowed_origins)
        return answer, headers


def init_app(app: Flask, gw: Gateway) -> None:
    """Put the shortcut in front of the app (outermost, so nothing of Flask runs for it)."""
    rules = list(app.url_map.iter_rules(ROUTE))
    if len(rules) != 1 or "GET" not in (rules[0].methods or ()):
        raise RuntimeError(f"{ROUTE} must be one GET route")
    app.wsgi_app = FastPolls(gw, app.wsgi_app, JobPath(rules[0].rule))  # type: ignore[method-assign]  # the WSGI app is meant to be wrapped
