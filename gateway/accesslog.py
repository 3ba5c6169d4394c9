"""gunicorn's logger for the gateway (``logger_class`` in gunicorn_conf.py): the access line costs
nothing when the access log is off, and only the atoms it shows when it is on.

gunicorn counts an access log as on whenever a ``logconfig_dict`` is set, and then builds, for
every request, a dict of every request header, response header and environ entry before the
logger drops the record. Here the access log is on only when the ``gunicorn.access`` logger has
a handler that writes (``GATEWAY_ACCESS_LOG=1``, or gunicorn's own ``--access-logfile``), and
with the gateway's ``ACCESS_LOG_FORMAT`` the atoms are the few that format names.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn import glogging

from gateway.logs import ACCESS_LOG_FORMAT


def writes(logger: logging.Logger) -> bool:
    """True if a record logged on ``logger`` reaches a handler that is not a NullHandler."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


class GatewayLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's Logger, with the access line built only when it is written."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self._access_log_enabled: bool = bool(self._access_log_enabled) and writes(self.access_log)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """The atoms ``ACCESS_LOG_FORMAT`` uses (the JSON line's fields); gunicorn's full set for
        any other format."""
        if self.cfg.access_log_format != ACCESS_LOG_FORMAT:
            full: dict[str, Any] = super().atoms(resp, req, environ, request_time)
            return full
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-")
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "H": environ.get("SERVER_PROTOCOL"),
            "s": status,
            "B": getattr(resp, "sent", None),
            "M": request_time.seconds * 1000 + int(request_time.microseconds / 1000),
            "{x-request-id}o": request_id,
        }
