"""Mux Video (https://www.mux.com/docs/core/listen-for-webhooks).

Signature (https://www.mux.com/docs/core/verify-webhook-signatures):
``Mux-Signature: t=<unix seconds>,v1=<hex>``; signed string ``{t}.{raw body}``, HMAC-SHA256
with the endpoint's signing secret as-is. The tolerance is the gateway's, both ways. Mux may
send a message twice even after a 2xx: the body's ``id`` is the event id.

Body: ``type``, ``id``, ``created_at`` (the event time), ``object {type, id}``, ``data`` (the
upload or asset). The external id is the direct upload's id for the upload and for the asset
made from it (``data.upload_id``), so one job follows a browser upload from "waiting" to
"ready"; an asset created from a URL is followed by its asset id. The result is the asset's
public playback URL (``https://stream.mux.com/{playback_id}.m3u8``).

Status read (reconciliation): ``GET {api_base}/video/v1/assets/{id}`` with the access token
from ``api_key_env`` written ``token_id:token_secret`` (HTTP basic auth; ``api_base`` defaults
to ``https://api.mux.com``). The asset's ``status`` maps by ``ASSET_STATUS_STATES``. Only
assets are read: a job followed by its direct upload's id gets a 404 and is not reconciled.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from adapters.base import (
    Adapter,
    DetailsRequest,
    ProviderEvent,
    WebhookRequest,
    api_answer,
    api_request,
    basic,
    constant_time_in,
    json_body,
    read_event_id,
    utc_from_iso,
    utc_from_unix,
)
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

SIGNATURE_HEADER = "Mux-Signature"

Q, P, C, F = State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED

#: event ``type`` -> state; other types (``video.asset.updated``, tracks, renditions…) are ignored
EVENT_STATES: Mapping[str, State] = {
    "video.upload.created": Q,  # upload URL made, waiting for the file
    "video.upload.asset_created": P,  # the file arrived; an asset is being prepared
    "video.upload.cancelled": F,
    "video.upload.errored": F,
    "video.asset.created": P,  # status "preparing"
    "video.asset.ready": C,
    "video.asset.errored": F,
}

#: failing type -> (default code, default message)
FAILURES: Mapping[str, tuple[str, str]] = {
    "video.upload.cancelled": ("upload_cancelled", "The upload was cancelled."),
    "video.upload.errored": ("upload_errored", "The upload failed."),
    "video.asset.errored": ("asset_errored", "Mux could not process the video."),
}

#: status read: an asset's ``status`` -> state (and the webhook type that says the same)
ASSET_STATUS_STATES: Mapping[str, tuple[State, str]] = {
    "preparing": (P, "video.asset.created"),
    "ready": (C, "video.asset.ready"),
    "errored": (F, "video.asset.errored"),
}
DEFAULT_API_BASE = "https://api.mux.com"
PLAYBACK_URL = "https://stream.mux.com/{}.m3u8"
THUMBNAIL_URL = "https://image.mux.com/{}/thumbnail.jpg"
MAX_ID = 255


def _str(value: Any, limit: int = 255) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


class MuxAdapter(Adapter):
    """Mux direct uploads and assets, from upload to a playable asset."""

    name = "mux"

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return [(f"`{etype}`", s.value) for etype, s in EVENT_STATES.items()]

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        header = request.header(SIGNATURE_HEADER)
        if not header:
            raise SignatureError("missing Mux-Signature header")
        items = [part.strip().partition("=") for part in header.split(",")]
        timestamps = [value for key, _, value in items if key == "t"]
        given = [value.encode("ascii", "replace") for key, _, value in items if key == "v1" and value]
        if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()) or not given:
            raise SignatureError("Mux-Signature is not t=<unix>,v1=<hex>")
        self.check_timestamp(timestamps[0])
        signed = timestamps[0].encode("ascii") + b"." + request.body
        expected = [hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest() for secret in secrets]
        if not any(constant_time_in(g, expected) for g in given):
            raise SignatureError("no signature matches any active secret")

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        event = json_body(request)
        if not isinstance(event, dict):
            raise PayloadError("a Mux webhook body is a JSON object")
        event_id, etype = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID:
            raise PayloadError("event id missing")
        if not isinstance(etype, str) or not etype:
            raise PayloadError("event type missing")
        data = event.get("data")
        obj = event.get("object")
        if not isinstance(data, dict):
            raise PayloadError("data missing")
        object_id = obj.get("id") if isinstance(obj, dict) else None
        external_id = _str(data.get("upload_id")) if etype.startswith("video.asset.") else None
        external_id = external_id or _str(object_id) or _str(data.get("id"))
        if not external_id:
            raise PayloadError("object.id missing")
        if "created_at" not in event:
            raise PayloadError("created_at missing")
        state = EVENT_STATES.get(etype)
        return [
            ProviderEvent(
                event_id=event_id,
                external_id=external_id,
                occurred_at=utc_from_iso(event["created_at"]),
                state=state,
                type=etype[:255],
                error=self._error(etype, data) if state is F else None,
                result=self._result(data) if state is C else None,
            )
        ]

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return [(f"asset `status` `{status}`", s.value) for status, (s, _) in ASSET_STATUS_STATES.items()]

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /video/v1/assets/{id}``."""
        return api_request(self, DEFAULT_API_BASE, "/video/v1/assets/" + quote(external_id, safe=""), basic(api_key))

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        data = api_answer("Mux", status, body).get("data")
        if not isinstance(data, dict) or data.get("id") != external_id or not isinstance(data.get("status"), str):
            raise PayloadError("the answer is not the asset asked for, with a status")
        word = data["status"]
        if word not in ASSET_STATUS_STATES:
            raise PayloadError(f"unknown asset status {word[:40]!r}")
        state, etype = ASSET_STATUS_STATES[word]
        at = None
        created = data.get("created_at")
        if state is P and isinstance(created, str) and created.isascii() and created.isdigit() and len(created) < 12:
            at = utc_from_unix(int(created))  # Mux dates only the asset's creation: a live status keeps it
        return [ProviderEvent(
            event_id=read_event_id(external_id, word, at), external_id=external_id, occurred_at=at or read_at, state=state,
            type=f"api.asset.{word}", error=self._error(etype, data) if state is F else None,
            result=self._result(data) if state is C else None)]

    @staticmethod
    def _error(etype: str, data: Mapping[str, Any]) -> dict[str, Any]:
        code, message = FAILURES.get(etype, ("failed", "The video failed."))
        errors = data.get("errors") if isinstance(data.get("errors"), dict) else data.get("error")
        if isinstance(errors, dict):
            code = _str(errors.get("type"), 64) or code
            messages = errors.get("messages")
            if isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
                message = " ".join(messages)[:2000]
            elif _str(errors.get("message")):
                message = errors["message"][:2000]
        return {"code": code, "message": message, "retryable": True}

    @staticmethod
    def _result(data: Mapping[str, Any]) -> dict[str, Any]:
        playback_ids = data.get("playback_ids")
        public = None
        if isinstance(playback_ids, list):
            ids = [p for p in playback_ids if isinstance(p, dict) and _str(p.get("id"), 128)]
            chosen = next((p for p in ids if p.get("policy") == "public"), ids[0] if ids else None)
            public = chosen["id"][:128] if chosen else None
        result: dict[str, Any] = {
            "url": PLAYBACK_URL.format(public) if public else None,
            "asset_id": _str(data.get("id")),
        }
        if public:
            result["thumbnail_url"] = THUMBNAIL_URL.format(public)
        duration = data.get("duration")
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and 0 <= duration < 10**9:
            result["duration"] = duration
        return result
