"""The secret that signs a source's retry callbacks (gateway/outbox.py, docs/retries.md).

Never one of the source's webhook secrets: a callback replayed to the gateway's own inbound
endpoint would then verify. ``callback_secret_env`` names it, else it is derived from the
source's first webhook secret (``derive_callback_secret``); either way a ``whsec_`` Standard
Webhooks secret, checked at start-up (``check_callback_secrets``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from gateway.config import SourceConfig
from gateway.errors import ConfigError
from gateway.services import Services

#: the label a derived callback secret is an HMAC of (keyed with the source's first webhook secret)
CALLBACK_SECRET_LABEL = b"gateway callback secret v1"


def callback_secret(source: SourceConfig, env: Mapping[str, str]) -> str | None:
    """The secret that signs the source's callbacks: ``callback_secret_env``, else one derived from
    its first webhook secret (``derive_callback_secret``). Never the webhook secret itself: a
    callback replayed to the gateway's own inbound endpoint would then verify."""
    if source.callback_secret_env:
        return (env.get(source.callback_secret_env) or "").strip() or None
    return derive_callback_secret(source.secrets[0]) if source.secrets else None


def derive_callback_secret(webhook_secret: str) -> str:
    """``whsec_`` + base64(HMAC-SHA256(key = the webhook secret's UTF-8 bytes, msg = CALLBACK_SECRET_LABEL)):
    a Standard Webhooks secret the integrator can compute from the secret it already holds."""
    digest = hmac.new(webhook_secret.encode("utf-8"), CALLBACK_SECRET_LABEL, hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()


def _is_standard_secret(secret: str) -> bool:
    """``whsec_`` + base64 of at least 16 bytes: what the integrator's Standard Webhooks library accepts."""
    if not secret.startswith("whsec_"):
        return False
    body = secret[len("whsec_"):]
    try:
        return len(base64.b64decode(body + "=" * (-len(body) % 4), validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False


def check_callback_secrets(gw: Services) -> None:
    """Stop start-up on a source whose callback secret is unusable (unset, not whsec_, or equal to a webhook secret)."""
    for name, source in gw.sources.items():
        sc = source.config
        if not sc.callback_url:
            continue
        key = f"sources.{name}.callback_secret_env" if sc.callback_secret_env else f"sources.{name}.secrets_env"
        secret = callback_secret(sc, gw.config.env)
        if not secret:
            if sc.callback_secret_env:
                raise ConfigError(f"{key}: environment variable {sc.callback_secret_env} is not set or empty")
            continue  # non-strict loading (CLI listings): no secrets to check
        if not _is_standard_secret(secret):
            raise ConfigError(f"{key}: the callback secret must be a Standard Webhooks secret (whsec_ + base64)")
        if secret in sc.secrets:
            raise ConfigError(f"{key}: the callback secret must differ from the source's webhook secrets (a callback would verify as a webhook)")
        if urlsplit(sc.callback_url).scheme not in ("http", "https"):
            raise ConfigError(f"sources.{name}.callback_url: expected an http(s) URL")
