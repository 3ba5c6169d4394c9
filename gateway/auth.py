"""Credentials: integrator API keys, and job-scoped browser tokens signed with itsdangerous.

A job token names its job and scopes (``read``, ``retry``), expires, and is useless for any
other job. Both travel as ``Authorization: Bearer …``; on GET routes the job token (never an
API key) is also accepted as ``?token=`` because EventSource cannot set headers.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.wrappers import Request  # Flask's request, or the raw one of the fast poll path

from gateway.errors import Forbidden, Unauthorized

SCOPES = ("read", "retry")
MAX_TOKEN_LENGTH = 1024
VERIFIED_TOKENS = 4096  # job tokens whose signature each process remembers having checked


@dataclass(frozen=True)
class Principal:
    """Who is asking: an integrator (API key) or a browser holding one job's token."""

    kind: str  # "api_key" | "job_token"
    job_id: str | None = None
    scopes: tuple[str, ...] = ()
    name: str = ""  # a fingerprint safe to log, never the credential
    expires: int | None = None  # a job token's expiry (unix seconds); API keys do not expire

    def can(self, job_id: str, scope: str) -> bool:
        return self.kind == "api_key" or (self.job_id == job_id and scope in self.scopes)


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a credential, for logs and the trace."""
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


def looks_like_job_token(credential: str) -> bool:
    """True when ``credential`` has a job token's shape (``<base64 JSON>.<signature>``), so a
    refusal can say "invalid token" to a browser and "unknown API key" to an integrator."""
    payload, dot, signature = credential.rpartition(".")
    if not dot or not payload or not signature or len(credential) > MAX_TOKEN_LENGTH:
        return len(credential) > MAX_TOKEN_LENGTH
    try:
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).startswith(b"{")
    except (binascii.Error, ValueError):
        return False


class Auth:
    """API keys and job tokens. A browser polls with the same token many times a second, so each
    process remembers the tokens whose signature it has verified (a bounded LRU of
    ``VERIFIED_TOKENS``; an invalid token is never remembered); the expiry is checked on every
    use, remembered or not."""

    def __init__(self, secret_key: str, api_keys: Sequence[str], token_ttl: int, *, clock: Callable[[], float] = time.time):
        self._serializer = URLSafeSerializer(secret_key, salt="gateway.job-token.v1")
        self._api_keys = [k.encode() for k in api_keys]
        self.token_ttl = token_ttl
        self.clock = clock
        self._verified = functools.lru_cache(maxsize=VERIFIED_TOKENS)(self._verify)

    def issue(self, job_id: str, scopes: Iterable[str] = SCOPES, ttl: int | None = None) -> tuple[str, int]:
        """A browser token for one job and its expiry (unix seconds)."""
        expires = int(self.clock()) + (ttl or self.token_ttl)
        token = self._serializer.dumps({"j": job_id, "s": sorted(set(scopes)), "x": expires})
        return token, expires

    def is_api_key(self, credential: str) -> bool:
        """True when ``credential`` is one of the integrator API keys (constant-time compare)."""
        given = credential.encode()
        found = False
        for key in self._api_keys:
            found |= hmac.compare_digest(given, key)
        return found

    def _verify(self, credential: str) -> tuple[Principal, int]:
        """A job token's principal and expiry, once its signature and shape are checked."""
        try:
            data = self._serializer.loads(credential)
        except (BadSignature, ValueError, TypeError, UnicodeError):
            raise Unauthorized("invalid token", code="invalid_token") from None
        if not isinstance(data, dict) or not isinstance(data.get("j"), str) or not isinstance(data.get("x"), int):
            raise Unauthorized("invalid token", code="invalid_token")
        scopes = tuple(s for s in data.get("s", []) if s in SCOPES)
        return Principal("job_token", data["j"], scopes, name="token:" + data["j"], expires=data["x"]), data["x"]

    def _job_token(self, credential: str) -> Principal:
        if len(credential) > MAX_TOKEN_LENGTH:
            raise Unauthorized("invalid token", code="invalid_token")
        who, expires = self._verified(credential)
        if expires < self.clock():
            raise Unauthorized("token expired", code="token_expired")
        return who

    def principal(self, credential: str | None) -> Principal:
        """The principal for a presented credential; Unauthorized when missing or invalid."""
        if not credential:
            raise Unauthorized("missing credentials: Authorization: Bearer <api key or job token>")
        if self.is_api_key(credential):
            return Principal("api_key", name="key:" + fingerprint(credential))
        if not looks_like_job_token(credential):
            raise Unauthorized("unknown API key: it is not one of the gateway's API keys (GATEWAY_API_KEYS)", code="invalid_api_key")
        return self._job_token(credential)

    def from_request(self, request: Request) -> Principal:
        """Bearer header first; ``?token=`` only on GET (EventSource, long-poll) and only for a job
        token: a URL ends up in logs, histories and proxies, so an API key there is refused."""
        header = request.headers.get("Authorization", "")
        credential = header[7:].strip() if header[:7].lower() == "bearer " else None
        if not credential and request.method in ("GET", "HEAD"):
            credential = request.args.get("token") or None
            if credential and self.is_api_key(credential):
                raise Unauthorized("an API key is accepted only in the Authorization header, never in a URL", code="api_key_in_url")
        return self.principal(credential)

    def require_api_key(self, request: Request) -> Principal:
        who = self.from_request(request)
        if who.kind != "api_key":
            raise Forbidden("this action needs an API key", code="api_key_required")
        return who

    def require_job(self, request: Request, job_id: str, scope: str = "read") -> Principal:
        who = self.from_request(request)
        if not who.can(job_id, scope):
            raise Forbidden("these credentials do not cover this job or action")
        return who
