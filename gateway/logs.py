"""Structured logs: one JSON object a line on stderr (readable text on a terminal).

Every line logged while serving a request carries its ``request_id`` (also sent back in the
``X-Request-ID`` header), and every line about a job its ``job_id``: handlers pass it in
``extra``, and ``RequestContext`` fills it from the route (``/api/jobs/<job_id>/…``) when they
do not. Credentials never reach a log line: nothing here logs headers, bodies or query strings
(gunicorn's access line is configured to log the path only), and ``redact`` masks the
configured secret values (``register_secrets``) and anything shaped like a secret, signature or
token in whatever a message has to quote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRETISH = re.compile(
    r"(whsec_[A-Za-z0-9+/=_-]+"  # Standard Webhooks / Stripe signing secrets
    r"|v1[,=][A-Za-z0-9+/=]{16,}"  # Standard Webhooks and Stripe signatures
    r"|t=\d+,v1=[0-9a-f]+"  # a whole Stripe-Signature header
    r"|Bearer\s+\S+"  # an Authorization header value
    r"|(?i:token=)[^&\s\"']+"  # a token in a query string
    r"|[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}"  # itsdangerous job tokens
    r"|(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/]{40,}={0,2})"  # a bare HMAC / key: a long opaque base64 or hex run
)


MIN_KNOWN_SECRET = 4  # shorter configured values are not searched for (they would mask ordinary words)


class _KnownSecrets:
    """The configured secret values of this process, masked wherever they appear, whatever their
    shape: a short or plain secret (``hunter2``) sent as a path or ``X-Request-ID`` has no
    secret's shape, so ``_SECRETISH`` alone would log it verbatim."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        self.values |= {v for v in values if v and len(v) >= MIN_KNOWN_SECRET}
        ordered = sorted(self.values, key=len, reverse=True)  # the longest first: no half-masked secret
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None


_KNOWN = _KnownSecrets()


def register_secrets(values: Iterable[str]) -> None:
    """Mask these exact values in every log line from now on (``create_app`` passes the configured
    secrets, API keys and tokens)."""
    _KNOWN.add(values)


def redact(text: str) -> str:
    """Mask the configured secret values, and anything shaped like a secret, signature or token."""
    if _KNOWN.pattern is not None:
        text = _KNOWN.pattern.sub("[redacted]", text)
    return _SECRETISH.sub("[redacted]", text)


_JOB_PATH = re.compile(r"^/api/jobs/(job_[A-Za-z0-9_-]{1,60})(?:/|$)")


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """gunicorn's access line as fields, from a chosen few of its atoms (never headers, query or referer)."""
    atoms = record.args
    if record.name != "gunicorn.access" or not isinstance(atoms, Mapping):
        return {}
    path = str(atoms["U"])
    fields: dict[str, Any] = {
        "method": atoms["m"], "path": path, "status": atoms["s"], "bytes": atoms["B"], "ms": atoms["M"],
        "remote_addr": atoms["h"], "request_id": atoms["{x-request-id}o"],
    }
    match = _JOB_PATH.match(path)
    if match:
        fields["job_id"] = match.group(1)
    return fields


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
    return {**_access_fields(record), **fields}


def _safe(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            out[key] = _safe(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=lambda v: redact(str(v)))


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, message, then key=value extras."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={_safe(v)}" for k, v in _extras(record).items() if v is not None)
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name:<16} {redact(record.getMessage())}"
        if record.exc_info:
            extras += "\n" + redact(self.formatException(record.exc_info))
        return f"{line}  {extras}" if extras else line


def wants_text() -> bool:
    """Text on a terminal unless GATEWAY_LOG_FORMAT=json; JSON otherwise (or GATEWAY_LOG_FORMAT=text)."""
    chosen = os.environ.get("GATEWAY_LOG_FORMAT", "")
    if chosen in ("json", "text"):
        return chosen == "text"
    return sys.stderr.isatty()


class AutoFormatter(logging.Formatter):
    """JSON or text as ``wants_text`` says, decided once (for gunicorn's own loggers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._inner: logging.Formatter = TextFormatter() if wants_text() else JsonFormatter()

    def format(self, record: logging.LogRecord) -> str:
        return self._inner.format(record)


class RequestContext(logging.Filter):
    """Adds ``request_id`` and ``job_id`` to records logged inside a Flask request, when missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            from flask import g, has_request_context, request
        except ImportError:  # pragma: no cover - flask is a dependency
            return True
        if has_request_context():
            if getattr(record, "request_id", None) is None:
                record.request_id = g.get("request_id")
            if not hasattr(record, "job_id"):
                job_id = (request.view_args or {}).get("job_id")
                if job_id is not None:
                    record.job_id = job_id
        return True


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process; idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_gateway", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._gateway = True  # type: ignore[attr-defined]  # our mark on a stdlib handler, to find it again
    handler.setFormatter(TextFormatter() if wants_text() else JsonFormatter())
    handler.addFilter(RequestContext())
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin per process


#: gunicorn's access line: the path without its query string (``?token=`` stays out of logs),
#: status, bytes, duration, and the request id the app answered with
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms request_id=%({x-request-id}o)s'


def gunicorn_logconfig(access_log: bool) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its own lines in our format on stderr; the access log only
    when asked for. The root logger is left to ``setup_logging`` in each worker."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "INFO", "handlers": []},
        "formatters": {"gateway": {"()": "gateway.logs.AutoFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "gateway", "stream": "ext://sys.stderr"},
            "null": {"class": "logging.NullHandler"},
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr" if access_log else "null"], "propagate": False},
        },
    }
