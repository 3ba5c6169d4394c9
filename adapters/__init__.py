"""Provider adapters: verify a webhook delivery and translate it into canonical job events.

Each module reads like its provider's documentation. An adapter author imports from here
only: ``from adapters import Adapter, ProviderEvent, WebhookRequest, SignatureError,
PayloadError, State`` and the helpers below. (The conformance kit is ``adapters.testing``,
imported by tests.)
"""

from adapters.base import (
    Adapter,
    DetailsRequest,
    ProviderEvent,
    WebhookRequest,
    as_utc_ms,
    check_header_token,
    constant_time_in,
    form_body,
    json_body,
    utc_from_iso,
    utc_from_unix,
)
from adapters.standard import verify_standard
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

__all__ = [
    "Adapter",
    "DetailsRequest",
    "PayloadError",
    "ProviderEvent",
    "SignatureError",
    "State",
    "WebhookRequest",
    "as_utc_ms",
    "check_header_token",
    "constant_time_in",
    "form_body",
    "json_body",
    "utc_from_iso",
    "utc_from_unix",
    "verify_standard",
]
