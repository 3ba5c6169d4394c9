"""Render (https://render.com/docs/webhooks).

Signing is Standard Webhooks: headers ``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` (``v1,<base64>``); signed string ``{id}.{timestamp}.{body}``,
HMAC-SHA256 with the base64-decoded ``whsec_`` secret. Render's own example receivers verify
with the ``standardwebhooks`` library; so does ``adapters.standard.verify_standard``. The
tolerance is the gateway's, both ways.

The body is thin: ``{"type": "deploy_ended", "timestamp": "…", "data": {"id": "evj-…",
"serviceId": "srv-…"}}``. ``data.id`` is Render's event id (stable across retries: the dedup
key) and ``timestamp`` the event time. What the job needs — the deploy or job id and how it
ended — is in the body only sometimes (``data.deployId`` / ``data.jobId``, ``data.status``);
when it is, the event is mapped at once. Otherwise the event is recorded and acknowledged with
``needs_details``, and the gateway fetches ``GET {api_base}/events/{data.id}`` with the source's
API key (``api_key_env``) — as Render's example receivers do — and applies what
``parse_details`` reads from ``details``.

Source options: ``api_base`` (default ``https://api.render.com/v1``), ``api_key_env``,
``service_id``.

Status read (reconciliation), the same API and key: ``GET {api_base}/services/{service_id}/deploys/{id}``
for a job followed by its deploy id (``dep-…``); Render names a deploy under its service, so
the source's ``service_id`` option (``srv-…``) is needed. ``status`` maps by
``DEPLOY_STATUS_STATES``, dated by ``finishedAt`` at the end, ``updatedAt``/``createdAt`` before.

Statuses are Render's words (``succeeded`` / ``failed`` / ``canceled``); the Events API's
numeric ``details.status`` is read as Render's example does (``2`` is success, any other
number is not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest, api_answer, api_request, bearer, json_body, read_event_id, utc_from_iso
from adapters.standard import verify_standard
from gateway.errors import PayloadError
from gateway.states import State

P, C, F = State.PROCESSING, State.COMPLETE, State.FAILED
DEFAULT_API_BASE = "https://api.render.com/v1"

#: event type -> state when something starts
STARTED: Mapping[str, State] = {
    "build_started": P,
    "pre_deploy_started": P,
    "deploy_started": P,
}
#: event type -> {outcome: state} when it ends
ENDED: Mapping[str, Mapping[str, State]] = {
    "build_ended": {"succeeded": P, "failed": F, "canceled": F},  # the deploy goes on after a build
    "pre_deploy_ended": {"succeeded": P, "failed": F, "canceled": F},
    "deploy_ended": {"succeeded": C, "failed": F, "canceled": F},
    "job_run_ended": {"succeeded": C, "failed": F, "canceled": F},
}
#: event type -> error code, for events that are a failure by themselves
FAILED_AT_ONCE: Mapping[str, str] = {
    "image_pull_failed": "image_pull_failed",
}

#: event type -> the details key that names the thing a person waits on (the external id)
ID_KEYS: Mapping[str, tuple[str, ...]] = {
    "job_run_ended": ("jobId", "jobRunId", "id"),
}
DEFAULT_ID_KEYS = ("deployId", "buildId")

#: event type prefix -> the words used in error messages and codes
SUBJECTS: Mapping[str, str] = {
    "build": "Build",
    "pre_deploy": "Pre-deploy command",
    "deploy": "Deploy",
    "job_run": "Job run",
    "image_pull": "Image pull",
}

MAX_ID = 255

#: status read: a deploy's ``status`` -> state; a failing one -> its error code
DEPLOY_STATUS_STATES: Mapping[str, State] = {
    "created": State.QUEUED,
    "queued": State.QUEUED,
    "build_in_progress": P,
    "update_in_progress": P,
    "pre_deploy_in_progress": P,
    "live": C,
    "deactivated": C,  # went live, then a newer deploy replaced it
    "build_failed": F,
    "update_failed": F,
    "pre_deploy_failed": F,
    "canceled": F,
}


def _outcome(status: Any) -> str | None:
    """Render's status as succeeded / failed / canceled; None when absent or unknown."""
    if isinstance(status, bool):
        return None
    if isinstance(status, int):
        return "succeeded" if status == 2 else "failed"
    if not isinstance(status, str):
        return None
    status = status.lower()
    if status in ("succeeded", "success", "live", "deactivated"):
        return "succeeded"
    if status in ("canceled", "cancelled"):
        return "canceled"
    if status in ("failed", "build_failed", "update_failed", "pre_deploy_failed", "failure"):
        return "failed"
    return None


def _subject(etype: str) -> tuple[str, str]:
    for prefix, words in SUBJECTS.items():
        if etype.startswith(prefix):
            return prefix, words
    return "deploy", "Deploy"


def _external_id(etype: str, fields: Mapping[str, Any]) -> str | None:
    for key in ID_KEYS.get(etype, DEFAULT_ID_KEYS):
        value = fields.get(key)
        if isinstance(value, str) and value and len(value) <= MAX_ID:
            return value
    return None


def _reason(fields: Mapping[str, Any]) -> str | None:
    reason = fields.get("reason")
    if isinstance(reason, str) and reason:
        return reason[:500]
    if isinstance(reason, dict) and reason:
        return ", ".join(str(k)[:60] for k in list(reason)[:5])
    return None


class RenderAdapter(Adapter):
    """Render deploys, builds, pre-deploy commands and one-off job runs."""

    name = "render"
    options_schema = {"service_id": str}

    def status_unavailable(self) -> str | None:
        return None if self.options.get("service_id") else "the service_id option (srv-…) is not set"

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return [(f"deploy `status` `{status}`", s.value) for status, s in DEPLOY_STATUS_STATES.items()]

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /v1/services/{service_id}/deploys/{id}`` for a ``dep-…`` id."""
        service = self.options.get("service_id")
        if not isinstance(service, str) or not service or not external_id.startswith("dep-"):
            return None
        return api_request(self, DEFAULT_API_BASE, f"/services/{quote(service, safe='')}/deploys/{quote(external_id, safe='')}", bearer(api_key))

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        doc = api_answer("Render", status, body)
        inner = doc.get("deploy")
        deploy: dict[str, Any] = inner if isinstance(inner, dict) else doc
        word = deploy.get("status")
        if deploy.get("id") != external_id or not isinstance(word, str):
            raise PayloadError("the answer is not the deploy asked for, with a status")
        state = DEPLOY_STATUS_STATES.get(word)
        if state is None:
            raise PayloadError(f"unknown deploy status {word[:40]!r}")
        keys = ("finishedAt", "updatedAt") if state in (C, F) else ("updatedAt", "createdAt")
        stamp = next((deploy[k] for k in keys if deploy.get(k) is not None), None)
        at = utc_from_iso(stamp) if stamp is not None else None
        service = self.options.get("service_id")
        fields = {"deployId": external_id, "serviceId": service, "status": _outcome(word) or "failed", "reason": word}
        mapped = self._map("deploy_ended", fields, read_event_id(external_id, word, at), at or read_at) if state in (C, F) else None
        if mapped is not None:
            code = word if state is F else None
            error = {**(mapped.error or {}), "code": code} if code else mapped.error
            return [ProviderEvent(event_id=mapped.event_id, external_id=external_id, occurred_at=mapped.occurred_at, state=state,
                                  type=f"api.deploy.{word}", error=error, result=mapped.result)]
        progress = {"current": None, "total": None, "step": "Deploying"} if state is P else None
        return [ProviderEvent(event_id=read_event_id(external_id, word, at), external_id=external_id, occurred_at=at or read_at,
                              state=state, type=f"api.deploy.{word}", progress=progress)]

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return ([(f"`{etype}`", s.value) for etype, s in STARTED.items()]
                + [(f"`{etype}`, {outcome}", s.value) for etype, ends in ENDED.items() for outcome, s in ends.items()]
                + [(f"`{etype}`", F.value) for etype in FAILED_AT_ONCE])

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        verify_standard(request, secrets, self)

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        body = json_body(request)
        if not isinstance(body, dict):
            raise PayloadError("a Render webhook body is a JSON object")
        etype, data = body.get("type"), body.get("data")
        if not isinstance(etype, str) or not etype or len(etype) > 100:
            raise PayloadError("type missing")
        if not isinstance(data, dict):
            raise PayloadError("data missing")
        event_id, service_id = data.get("id"), data.get("serviceId")
        if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
            raise PayloadError("data.id (the Render event id) missing")
        if not isinstance(service_id, str) or not service_id or len(service_id) > MAX_ID:
            raise PayloadError("data.serviceId missing")
        if "timestamp" not in body:
            raise PayloadError("timestamp missing")
        occurred_at = utc_from_iso(body["timestamp"])
        mapped = self._map(etype, data, event_id, occurred_at)
        if mapped is not None:
            return [mapped]
        tracked = etype in STARTED or etype in ENDED or etype in FAILED_AT_ONCE
        return [ProviderEvent(event_id=event_id, external_id=service_id, occurred_at=occurred_at, state=None, type=etype, needs_details=tracked)]

    def details_request(self, event: ProviderEvent, api_key: str | None) -> DetailsRequest | None:
        """``GET {api_base}/events/{id}`` with the API key: the event as Render's Events API tells it.

        Needs only ``event.event_id`` (Render's ``evj-…`` id), so an event rebuilt from storage works."""
        base = str(self.options.get("api_base") or DEFAULT_API_BASE).rstrip("/")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return DetailsRequest(url=f"{base}/events/{quote(event.event_id, safe='')}", headers=headers)

    def parse_details(self, event: ProviderEvent, status: int, body: bytes) -> list[ProviderEvent]:
        """The event the Events API describes, with the id ``{event id}:details``; PayloadError if unreadable.

        The caller retries 429 and 5xx answers itself; any other non-2xx answer is a PayloadError."""
        if not 200 <= status < 300:
            raise PayloadError(f"Render's Events API answered {status}", code="details_unavailable")
        doc = json_body(WebhookRequest(body=body, headers={}))
        if not isinstance(doc, dict) or not isinstance(doc.get("details"), dict):
            raise PayloadError("the Render event has no details")
        etype = doc["type"] if isinstance(doc.get("type"), str) and doc["type"] else event.type
        occurred_at = utc_from_iso(doc["timestamp"]) if doc.get("timestamp") is not None else event.occurred_at
        mapped = self._map(etype, doc["details"], f"{event.event_id}:details", occurred_at)
        if mapped is None:
            raise PayloadError(f"the details of {etype[:60]!r} name no deploy or job, or no known status")
        return [mapped]

    @staticmethod
    def _map(etype: str, fields: Mapping[str, Any], event_id: str, occurred_at: datetime) -> ProviderEvent | None:
        """The event when ``fields`` (the body's data or the API's details) tell id and state; else None."""
        external_id = _external_id(etype, fields)
        if external_id is None:
            return None
        prefix, words = _subject(etype)
        outcome: str | None
        if etype in STARTED:
            state, outcome = STARTED[etype], None
        elif etype in ENDED:
            outcome = _outcome(fields.get("status"))
            if outcome is None:
                return None
            state = ENDED[etype][outcome]
        elif etype in FAILED_AT_ONCE:
            state, outcome = F, "failed"
        else:
            return None
        error = None
        if state is F:
            code = FAILED_AT_ONCE.get(etype) or f"{prefix}_{outcome}"
            reason = _reason(fields)
            message = f"{words} {'was canceled' if outcome == 'canceled' else 'failed'}" + (f" ({reason})." if reason else ".")
            error = {"code": code, "message": message, "retryable": True}
        result = None
        if state is C:
            result = {"id": external_id, "service_id": fields.get("serviceId") if isinstance(fields.get("serviceId"), str) else None}
            url = fields.get("url")
            if isinstance(url, str) and url.startswith("https://"):
                result["url"] = url[:2048]
        step = f"{words} finished" if outcome == "succeeded" else {"build": "Building", "pre_deploy": "Running the pre-deploy command", "deploy": "Deploying"}.get(prefix)
        progress = {"current": None, "total": None, "step": step} if state is P and step else None
        return ProviderEvent(event_id=event_id, external_id=external_id, occurred_at=occurred_at, state=state, type=etype,
                             progress=progress, error=error, result=result)
