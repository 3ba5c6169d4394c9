"""Provider adapters: verify a webhook delivery and translate it into canonical job events.

Each module reads like its provider's documentation. The public API for adapter authors is
re-exported here.
"""

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest
from gateway.errors import PayloadError, SignatureError

__all__ = ["Adapter", "DetailsRequest", "ProviderEvent", "WebhookRequest", "SignatureError", "PayloadError"]
