"""Structured logs: one JSON object a line on stderr (readable text on a terminal).

Every line about a job carries ``job_id``; every request line its ``request_id``. Credentials
never reach a log line: nothing here logs headers or bodies, and ``redact`` masks anything
that looks like one when a message has to quote input.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRETISH = re.compile(r"(whsec_[A-Za-z0-9+/=]+|v1[,=][A-Za-z0-9+/=]{16,}|Bearer\s+\S+|[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,})")


#: gunicorn's access-log line without the query string or referrer: browsers' job tokens travel
#: as ``?token=`` (EventSource cannot set headers), and the default ``%(r)s`` would log them
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'


def redact(text: str) -> str:
    """Mask anything shaped like a secret, signature or token."""
    return _SECRETISH.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_"))
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {redact(record.getMessage())}"
        return f"{line}  {extras}" if extras else line


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process; idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_gateway", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._gateway = True  # type: ignore[attr-defined]
    as_text = sys.stderr.isatty() and os.environ.get("GATEWAY_LOG_FORMAT") != "json"
    handler.setFormatter(TextFormatter() if as_text else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
