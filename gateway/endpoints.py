"""Forwarding endpoints (CONTRACT §9): the integrator's own services that hear every job change
and verified delivery, signed with Standard Webhooks.

``[endpoints.<name>]`` takes ``url``, ``secret_env`` (one or more ``whsec_`` secrets, comma
separated for rotation: messages are signed with the first), ``events`` (patterns such as
``job.*`` or ``delivery.stripe``; default ``["job.*"]``) and optionally ``sources``. Checked at
start-up like sources (gateway/config.py); an endpoint's secret and any credentials in its URL
never reach a log line, a page or an API answer (use ``public_url``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class EndpointConfig:
    """One forwarding endpoint; ``secrets`` are the whsec_ secrets, the first one signs."""

    name: str
    url: str
    secret_env: str
    secrets: tuple[str, ...] = field(repr=False)
    events: tuple[str, ...] = ("job.*",)
    sources: tuple[str, ...] | None = None

    @property
    def public_url(self) -> str:
        """The URL without user, password, query or fragment (they may carry credentials)."""
        return public_url(self.url)

    def wants(self, message_type: str, source: str | None) -> bool:
        """Whether a message of this type (``job.complete``, ``delivery.stripe``) from this source
        is owed to this endpoint."""
        if self.sources is not None and source not in self.sources:
            return False
        return any(fnmatch.fnmatchcase(message_type, pattern) for pattern in self.events)

    def __repr__(self) -> str:  # never print secrets or URL credentials
        return f"EndpointConfig(name={self.name!r}, url={self.public_url!r}, events={self.events!r})"


def public_url(url: str) -> str:
    """``url`` with credentials (user:password@, query, fragment) removed, for logs and answers."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
