"""The gateway's few named errors, each mapped to one HTTP status in one place (gateway.app)."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error a client or provider can cause; carries the HTTP status and error code."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str = "", *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code:
            self.code = code
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The request is malformed."""

    status, code = 400, "bad_request"


class PayloadError(BadRequest):
    """A verified webhook body that cannot be read as the provider's event."""

    code = "unparseable_body"


class SignatureError(GatewayError):
    """Missing or invalid signature, or a timestamp outside the tolerance."""

    status, code = 401, "invalid_signature"


class Unauthorized(GatewayError):
    """Missing or invalid credentials."""

    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    """These credentials do not cover this job or action."""

    status, code = 403, "forbidden"


class NotFound(GatewayError):
    """No such resource."""

    status, code = 404, "not_found"


class Conflict(GatewayError):
    """The request conflicts with the job's current state."""

    status, code = 409, "conflict"


class PayloadTooLarge(GatewayError):
    """The request body is over the limit."""

    status, code = 413, "payload_too_large"


class RequestTimeout(GatewayError):
    """The client did not send its request body in time."""

    status, code = 408, "request_timeout"


class RateLimited(GatewayError):
    """Too many requests; try again after Retry-After."""

    status, code = 429, "rate_limited"


class Unavailable(GatewayError):
    """The database is unreachable; try again after Retry-After."""

    status, code = 503, "unavailable"

    def __init__(self, message: str = "", *, retry_after: int = 5, **kw: Any):
        super().__init__(message, **kw)
        self.headers.setdefault("Retry-After", str(retry_after))


class ConfigError(Exception):
    """A broken configuration; the message names the key. Stops start-up, never reaches HTTP."""
