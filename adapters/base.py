"""The adapter interface: what a provider adapter receives and what it returns.

An adapter does no I/O and touches no database. ``verify`` checks the raw body and headers
against any of the source's active secrets and raises ``SignatureError``; ``parse`` turns a
verified body into ``ProviderEvent``s and raises ``PayloadError`` for anything it cannot read.
Those two errors are the only ones an adapter may let out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from gateway.errors import PayloadError, SignatureError
from gateway.states import State


@dataclass(frozen=True)
class WebhookRequest:
    """One delivery as received: raw body bytes and headers, before anything parsed them."""

    body: bytes
    headers: Mapping[str, str]  # case-insensitive (werkzeug Headers in the app)
    url: str = ""  # the URL the provider signed (public URL for sources behind a proxy)
    query: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""
    #: when the gateway received it; the event time for providers that send none (Twilio SMS)
    received_at: datetime | None = None

    def header(self, name: str) -> str | None:
        """A header's value, looked up case-insensitively."""
        value = self.headers.get(name)
        if value is None:
            lowered = name.lower()
            for key, val in self.headers.items():
                if key.lower() == lowered:
                    return val
        return value


@dataclass(frozen=True)
class ProviderEvent:
    """One provider event translated to the canonical vocabulary.

    ``state`` is None when the event type maps to no job state (the delivery is then
    acknowledged as ignored). The optional dicts use the job JSON's shapes:
    progress ``{current, total, step}``, queue ``{name, position, total}``,
    error ``{code, message, retryable}``, result ``{...}``.
    """

    event_id: str
    external_id: str
    occurred_at: datetime
    state: State | None
    type: str = ""
    progress: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    label: str | None = None
    #: the body was too thin to know the state: the gateway records this event, acknowledges,
    #: then fetches ``Adapter.details_request`` and records what ``parse_details`` returns
    needs_details: bool = False


@dataclass(frozen=True)
class DetailsRequest:
    """An HTTP GET the gateway performs for an adapter (adapters do no I/O themselves)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


class Adapter(ABC):
    """A provider's webhook dialect. Subclasses set ``name`` and implement verify and parse.

    ``options`` are the source's own configuration keys (documented by each adapter);
    ``tolerance`` is the accepted clock skew in seconds, checked both ways.
    """

    name: ClassVar[str] = ""
    #: options this adapter accepts besides the common ones; unknown keys are a config error
    options_schema: ClassVar[Mapping[str, type]] = {}
    #: False for a provider that authenticates a delivery with a fixed token in a header or with
    #: HTTP basic auth instead of signing the body (use ``check_header_token``). Such a delivery
    #: proves who sent it, not what was sent nor when: whoever sees one request can post any body
    #: until the token is rotated. The conformance kit then checks what still applies (the
    #: constant-time compare, near-miss tokens, rotation, a missing header); docs/adapters.md
    #: "Providers that sign no body" has the whole weaker guarantee.
    signs_body: ClassVar[bool] = True
    #: False when the event id is not covered by the signature (GitHub's ``X-GitHub-Delivery``
    #: header): a captured body and signature replayed under a new id would pass as a new event,
    #: so the gateway also deduplicates such a source's events on a digest of the signed body
    event_id_signed: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any] | None = None, *, tolerance: int = 300):
        self.options = dict(options or {})
        self.tolerance = tolerance

    @abstractmethod
    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        """Raise SignatureError unless one of ``secrets`` signed this exact body recently."""

    @abstractmethod
    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        """The provider events in a verified body; PayloadError if it cannot be read."""

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        """(provider event, the state it maps to) rows from the adapter's own mapping, for
        docs/sources.md and ``gateway adapters --markdown``; [] when the adapter has none to show."""
        return []

    def details_request(self, event: ProviderEvent, api_key: str | None) -> DetailsRequest | None:
        """For thin payloads: the provider API call that tells the rest. None: nothing to fetch."""
        return None

    def parse_details(self, event: ProviderEvent, status: int, body: bytes) -> list[ProviderEvent]:
        """The events a details response describes; PayloadError if unreadable."""
        return []

    # -- helpers shared by the built-in adapters -------------------------------------------

    def check_timestamp(self, timestamp: str | int | float | None, now: float | None = None) -> float:
        """Parse a unix-seconds timestamp and enforce the tolerance both ways (replays and skew)."""
        try:
            ts = float(timestamp)  # type: ignore[arg-type]  # None is caught below as TypeError, with the rest
        except (TypeError, ValueError, OverflowError):
            raise SignatureError("missing or malformed signature timestamp") from None
        if ts != ts or ts in (float("inf"), float("-inf")):
            raise SignatureError("missing or malformed signature timestamp")
        now = time.time() if now is None else now
        if abs(now - ts) > self.tolerance:
            raise SignatureError("timestamp outside the tolerance")
        return ts


def json_body(request: WebhookRequest) -> Any:
    """The body as JSON, or PayloadError: strict UTF-8, no NaN, nesting bounded by the parser."""
    try:
        return json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not valid JSON: {type(exc).__name__}") from None


def form_body(request: WebhookRequest, *, max_fields: int = 200) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as (name, value) pairs, strictly parsed.

    PayloadError for a body that is not UTF-8, not well formed, or has too many fields. Blank
    values are kept: the provider signed them too.
    """
    try:
        text = request.body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), encoding="utf-8",
                         errors="strict", max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"body is not a well-formed form: {type(exc).__name__}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def constant_time_in(candidate: str | bytes, expected: Sequence[str | bytes]) -> bool:
    """True when ``candidate`` equals any of ``expected``, compared in constant time."""
    cand = candidate.encode() if isinstance(candidate, str) else candidate
    found = False
    for item in expected:
        exp = item.encode() if isinstance(item, str) else item
        found |= hmac.compare_digest(cand, exp)
    return found


def check_header_token(request: WebhookRequest, secrets: Sequence[str], header: str, *, scheme: str = "") -> None:
    """For ``signs_body = False`` adapters: ``header`` must carry one of ``secrets`` (after
    ``scheme``, e.g. ``Bearer``), compared in constant time. With ``scheme="Basic"`` the header's
    base64 ``user:password`` is decoded and compared with secrets written ``user:password``.
    SignatureError when the header is missing, malformed or matches no secret."""
    value = (request.header(header) or "").strip()
    if not value:
        raise SignatureError(f"missing {header} header")
    if scheme:
        given_scheme, _, value = value.partition(" ")
        if given_scheme.lower() != scheme.lower() or not value.strip():
            raise SignatureError(f"{header} is not {scheme} <credentials>")
        value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise SignatureError(f"{header} is not valid Basic credentials") from None
    if not constant_time_in(value.encode("utf-8", "replace"), [s.encode("utf-8") for s in secrets]):
        raise SignatureError(f"{header} matches no active secret")


def utc_from_unix(seconds: float) -> datetime:
    """A UTC datetime, truncated to milliseconds, from unix seconds."""
    try:
        dt = datetime.fromtimestamp(float(seconds), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PayloadError("timestamp is not a unix time") from None
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def utc_from_iso(text: Any) -> datetime:
    """A UTC datetime, truncated to milliseconds, from an ISO 8601 string (``Z`` allowed)."""
    if not isinstance(text, str):
        raise PayloadError("timestamp must be an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PayloadError(f"timestamp is not ISO 8601: {text[:40]!r}") from None
    return as_utc_ms(dt)


def as_utc_ms(dt: datetime) -> datetime:
    """A provider's datetime in UTC, truncated to milliseconds; naive means UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone(UTC)
    except (OverflowError, ValueError):
        raise PayloadError("timestamp out of range") from None
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)
