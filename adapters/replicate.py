"""Replicate (https://replicate.com/docs/topics/webhooks).

Signing is Standard Webhooks (https://replicate.com/docs/topics/webhooks/verify-webhook):
headers ``webhook-id`` (the same when a delivery is retried: the dedup key),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64>``, space-separated); signed string ``{id}.{timestamp}.{body}``, HMAC-SHA256 with
the base64-decoded ``whsec_`` secret (one per account, from ``GET /v1/webhooks/default/secret``).
The tolerance is the gateway's, both ways (Replicate's Python SDK checks none).

The body is the whole prediction, as ``GET /v1/predictions/{id}`` returns it: ``id`` is the
external id, ``status`` the state (table below), ``logs`` the progress, ``output`` the result.

Event time: ``created_at`` while starting, ``completed_at`` at the end. While processing every
snapshot has the same ``started_at``; Replicate sends one at most every 500 ms, each with more
log lines than the one before, so the event time is ``started_at`` plus one millisecond per
log line (never later than the ``webhook-timestamp`` it was sent at): successive progress folds
in order and stays before the end. Replicate retries only the final webhook.

Progress: the *last* tqdm bar in ``logs``, as the Replicate SDK reads it
(``Prediction.Progress.parse``): `` 45%|████▌     | 45/100 [00:03<00:04, 12.1it/s]`` gives
current 45 of total 100; the bar's description (``Sampling: 45%|…``) or else the last
non-bar log line is the step.

Status read (reconciliation): ``GET {api_base}/predictions/{id}`` with the API token from
``api_key_env`` as a bearer token (``api_base`` defaults to ``https://api.replicate.com/v1``).
The answer is the same prediction object as a webhook's body, read the same way (status table,
progress from the logs, error, output); a snapshot is dated as a webhook's is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest, api_answer, api_request, bearer, json_body, read_event_id, utc_from_iso, utc_from_unix
from adapters.standard import ID_HEADER, TIMESTAMP_HEADER, verify_standard
from gateway.errors import PayloadError
from gateway.states import State

Q, P, C, F = State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED

#: prediction (and training) ``status`` -> canonical state
STATUS_STATES: Mapping[str, State] = {
    "starting": Q,  # booting a model or waiting for a worker
    "processing": P,
    "succeeded": C,
    "failed": F,
    "canceled": F,
    "aborted": F,  # the deadline passed before it started
}

#: failing status -> (error code, default message, retryable)
FAILURES: Mapping[str, tuple[str, str, bool]] = {
    "failed": ("prediction_failed", "The prediction failed.", True),
    "canceled": ("canceled", "The prediction was canceled.", True),
    "aborted": ("aborted", "The prediction was aborted before it started (deadline exceeded).", True),
}

#: a tqdm progress bar: optional ``desc:``, percentage, the bar, then ``current/total``
TQDM = re.compile(r"^\s*(?:(?P<desc>[^|\r\n]*?):\s*)?(?P<percentage>\d+)%\s*\|.*?\|\s*(?P<current>\d+)\s*/\s*(?P<total>\d+)")

DEFAULT_API_BASE = "https://api.replicate.com/v1"
MAX_LOGS = 256 * 1024  # the tail of the logs is enough to find the last bar
MAX_ID = 255


def parse_progress(logs: str) -> dict[str, Any] | None:
    """``{current, total, step}`` from the last tqdm bar in ``logs``; None without a bar."""
    last_bar: re.Match[str] | None = None
    last_text: str | None = None
    for line in logs[-MAX_LOGS:].splitlines():  # tqdm redraws with \r: splitlines splits on it too
        match = TQDM.match(line)
        if match:
            last_bar = match
        elif line.strip():
            last_text = line.strip()
    if last_bar is None:
        return None
    current, total = int(last_bar["current"]), int(last_bar["total"])
    if current > 10**15 or total > 10**15:
        return None
    step = (last_bar["desc"] or "").strip() or last_text
    return {"current": current, "total": total, "step": step[:200] if step else None}


def _output_urls(output: Any) -> list[str]:
    """The URLs in a prediction's ``output``: a URL, a list of them, or a dict of them."""
    if isinstance(output, str):
        values: list[Any] = [output]
    elif isinstance(output, list):
        values = output
    elif isinstance(output, dict):
        values = list(output.values())
    else:
        values = []
    return [v[:2048] for v in values if isinstance(v, str) and v.startswith(("https://", "http://", "data:"))][:50]


class ReplicateAdapter(Adapter):
    """Replicate predictions and trainings, from ``starting`` to ``succeeded`` / ``failed`` / ``canceled``."""

    name = "replicate"

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return [(f"`status` `{status}`", s.value) for status, s in STATUS_STATES.items()]

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        verify_standard(request, secrets, self)

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        prediction = json_body(request)
        if not isinstance(prediction, dict):
            raise PayloadError("a Replicate webhook body is the prediction object")
        pred_id, status = prediction.get("id"), prediction.get("status")
        if not isinstance(pred_id, str) or not pred_id or len(pred_id) > MAX_ID:
            raise PayloadError("prediction id missing")
        if not isinstance(status, str) or not status:
            raise PayloadError("prediction status missing")
        event_id = request.header(ID_HEADER)
        if not event_id:
            raise PayloadError("webhook-id header missing")
        state = STATUS_STATES.get(status)
        logs = prediction.get("logs")
        if logs is not None and not isinstance(logs, str):
            raise PayloadError("logs must be a string")
        return [
            ProviderEvent(
                event_id=event_id,
                external_id=pred_id,
                occurred_at=self._occurred_at(prediction, state, request),
                state=state,
                type=f"prediction.{status[:40]}",
                progress=parse_progress(logs) if state is P and logs else None,
                error=self._error(status, prediction) if state is F else None,
                result=self._result(prediction) if state is C else None,
                label=self._label(prediction),
            )
        ]

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return [(f"prediction `status` `{status}`", s.value) for status, s in STATUS_STATES.items()]

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /v1/predictions/{id}``."""
        return api_request(self, DEFAULT_API_BASE, "/predictions/" + quote(external_id, safe=""), bearer(api_key))

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        prediction = api_answer("Replicate", status, body)
        word = prediction.get("status")
        if prediction.get("id") != external_id or not isinstance(word, str) or not word:
            raise PayloadError("the answer is not the prediction asked for, with a status")
        logs = prediction.get("logs")
        if logs is not None and not isinstance(logs, str):
            raise PayloadError("logs must be a string")
        state = STATUS_STATES.get(word)
        if state is None:
            raise PayloadError(f"unknown prediction status {word[:40]!r}")
        at = self._occurred_at(prediction, state, WebhookRequest(body=b"", headers={}))
        return [ProviderEvent(
            event_id=read_event_id(external_id, word, at), external_id=external_id, occurred_at=at, state=state,
            type=f"api.prediction.{word[:40]}", progress=parse_progress(logs) if state is P and logs else None,
            error=self._error(word, prediction) if state is F else None, result=self._result(prediction) if state is C else None,
            label=self._label(prediction))]

    @staticmethod
    def _occurred_at(prediction: Mapping[str, Any], state: State | None, request: WebhookRequest) -> datetime:
        def when(key: str) -> datetime | None:
            value = prediction.get(key)
            return utc_from_iso(value) if value is not None else None

        created, started, completed = when("created_at"), when("started_at"), when("completed_at")
        if state in (C, F) and completed:
            return completed
        if state is P and started is not None:
            # snapshots share started_at; each later one has more log lines (tqdm redraws
            # count): one millisecond per line orders them, never past the time it was sent
            lines = len((prediction.get("logs") or "").splitlines()) if isinstance(prediction.get("logs"), str) else 0
            offset = timedelta(milliseconds=min(lines, 10**6))
            sent = request.header(TIMESTAMP_HEADER)
            if sent and sent.isascii() and sent.isdigit() and len(sent) < 12:
                offset = max(timedelta(0), min(offset, utc_from_unix(int(sent)) - started))
            try:
                return started + offset
            except OverflowError:
                raise PayloadError("started_at out of range") from None
        best = started or created or completed
        if best is None:
            raise PayloadError("prediction has no created_at")
        return best

    @staticmethod
    def _error(status: str, prediction: Mapping[str, Any]) -> dict[str, Any]:
        code, message, retryable = FAILURES[status]
        error = prediction.get("error")
        if isinstance(error, str) and error.strip():
            message = error.strip()[:2000]
        elif isinstance(error, dict) and isinstance(error.get("detail"), str):
            message = error["detail"][:2000]
        return {"code": code, "message": message, "retryable": retryable}

    @staticmethod
    def _result(prediction: Mapping[str, Any]) -> dict[str, Any]:
        urls = _output_urls(prediction.get("output"))
        result: dict[str, Any] = {"url": urls[0] if urls else None}
        if len(urls) > 1:
            result["urls"] = urls
        if not urls and isinstance(prediction.get("output"), (str, int, float, bool)):
            result["output"] = str(prediction["output"])[:2000]
        links = prediction.get("urls")
        if isinstance(links, dict) and isinstance(links.get("get"), str):
            result["prediction_url"] = links["get"][:2048]
        metrics = prediction.get("metrics")
        predict_time = metrics.get("predict_time") if isinstance(metrics, dict) else None
        if isinstance(predict_time, (int, float)) and not isinstance(predict_time, bool) and math.isfinite(predict_time):
            result["predict_time"] = predict_time
        return result

    @staticmethod
    def _label(prediction: Mapping[str, Any]) -> str | None:
        model = prediction.get("model")
        return f"Replicate {model[:180]}" if isinstance(model, str) and model else None
