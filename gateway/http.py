"""HTTP helpers every interface shares: the JSON error body, request ids, CORS and Origin checks,
and job ETags with the conditional-request rules around them.

Used by the Flask views, the hooks ``create_app`` installs, and the WSGI shortcut in front of
Flask (fastpoll.py), so that each rule is written once.
"""

from __future__ import annotations

import os
from collections.abc import Collection, MutableMapping
from typing import Any

from flask import Response, jsonify
from werkzeug.wrappers import Request

from gateway.errors import BadRequest
from gateway.models import Job

try:  # gunicorn's chunked reader raises its own parse errors for a malformed or cut-off body
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - another WSGI server
    _ServerParseError = OSError

NO_CACHE = "no-cache, private"
API_PREFIX = "/api"  # the HTTP API's routes (api.bp, the SSE stream): CORS applies under it


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    """The one error body of the HTTP interface: ``{"error": {"code", "message"}}`` with ``status``."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


# -- request bodies ------------------------------------------------------------------------------


class ClientInput:
    """``wsgi.input`` whose read errors are the client's: a chunked body cut short or badly framed
    (gunicorn raises NoMoreData, InvalidChunkSize, ...) is a 400 ``incomplete_body``, not a 500."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._stream, name)(*args)
        except (OSError, _ServerParseError):
            raise BadRequest("the request body was cut short or badly framed", code="incomplete_body") from None

    def read(self, *args: Any) -> bytes:
        data: bytes = self._call("read", *args)
        return data

    def readline(self, *args: Any) -> bytes:
        line: bytes = self._call("readline", *args)
        return line

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._call("readlines", *args)
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def guard_input(wsgi_app: Any) -> Any:
    """Wrap a WSGI app so every request body is read through ClientInput."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH", "DELETE") and "wsgi.input" in environ:
            environ["wsgi.input"] = ClientInput(environ["wsgi.input"])
        return wsgi_app(environ, start_response)

    return app


# -- request ids and CORS -----------------------------------------------------------------------


def request_id_of(environ: dict[str, Any]) -> str:
    """The client's ``X-Request-ID`` when it is usable (1-64 printable characters), else a new one."""
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    return incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else os.urandom(16).hex()


#: Every response's security headers (pages, API, static files, the fast 304s). Scripts only from
#: the gateway's own files, never inline (the demo and its pages load modules from /static/).
#: Styles allow 'unsafe-inline' for one reason: <job-status> puts its stylesheet in a <style> in
#: its shadow root, which CSP treats as inline; no inline *script* is allowed anywhere. A page
#: that needs more (a console with nonces) sets its own Content-Security-Policy, which is kept.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a job token may travel in a URL (?token=): never pass it on
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP 2
}


def finish_headers(headers: MutableMapping[str, str], req: Request, request_id: str, allowed_origins: Collection[str]) -> None:
    """What every response gets: its request id, the security headers (unless the response set its
    own), and CORS headers for an allowed origin on ``/api/`` (the ``after_request`` hook, and the
    conditional polls answered before Flask, fastpoll.py)."""
    headers["X-Request-ID"] = request_id
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:
            headers[name] = value
    origin = req.environ.get("HTTP_ORIGIN")
    if origin and req.path.startswith(API_PREFIX + "/") and origin_allowed_for(origin, allowed_origins, req.host_url):
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = "ETag, X-Request-ID, Retry-After"
        headers["Vary"] = "Origin"
        if req.method == "OPTIONS":  # the preflight for Authorization / If-None-Match
            headers["Access-Control-Allow-Methods"] = "GET, POST"
            headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-None-Match, Last-Event-ID, X-Request-ID"
            headers["Access-Control-Max-Age"] = "600"


def origin_allowed_for(origin: str, allowed_origins: Collection[str], host_url: str) -> bool:
    """A browser origin may use the push and API endpoints: configured in ``allowed_origins``, or
    the gateway's own origin (``host_url``: its demo page and any page it serves are never foreign)."""
    return origin in allowed_origins or origin == host_url.rstrip("/")


# -- job ETags and conditional requests --------------------------------------------------------


def etag(job_id: str, version: int) -> str:
    """The ETag of a job at ``version`` (the one place its format is written)."""
    return f'"{job_id}.{version}"'


def etag_of(job: Job) -> str:
    """The ETag of ``job`` as read."""
    return etag(job.id, job.version)


def tag_matches(if_none_match: str | None, tag: str) -> bool:
    """True when an ``If-None-Match`` value names ``tag`` (strong or weak) or is ``*``."""
    if not if_none_match:
        return False
    return any(part.strip() in (tag, "W/" + tag, "*") for part in if_none_match.split(","))


def job_matches(if_none_match: str | None, job: Job) -> bool:
    """True when an ``If-None-Match`` value names ``job``'s current ETag (a 304)."""
    return tag_matches(if_none_match, etag_of(job))


def not_modified(tag: str) -> Response:
    """The 304 for a job whose current ETag is ``tag``."""
    return Response(status=304, headers=not_modified_headers(tag))


def not_modified_headers(tag: str) -> dict[str, str]:
    """A 304's headers (all it has: no body, so no Content-Type or Content-Length)."""
    return {"ETag": tag, "Cache-Control": NO_CACHE}
