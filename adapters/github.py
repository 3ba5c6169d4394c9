"""GitHub Actions (https://docs.github.com/en/webhooks).

Signature (https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries):
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``, keyed with the webhook's
secret as-is. GitHub signs no timestamp, so there is no replay window to check: a replayed
delivery carries the same ``X-GitHub-Delivery`` GUID (the event id, unchanged on
redelivery) and is answered ``duplicate``. That header is not signed (``event_id_signed =
False``), so the gateway also deduplicates on a digest of the signed body: the same body under
a new delivery id is a ``duplicate`` too. ``X-GitHub-Event`` names the event.

Events:

- ``workflow_run`` (external id = ``workflow_run.id``): action ``requested`` → queued,
  ``in_progress`` → processing, ``completed`` → by ``conclusion`` (table below). Event time
  ``workflow_run.updated_at``.
- ``workflow_job`` (external id = ``workflow_job.id``): ``queued`` / ``waiting`` → queued,
  ``in_progress`` → processing with the job's steps as progress ("step 3 of 7 — Run tests"),
  ``completed`` → by conclusion. Event time ``completed_at``, else ``started_at``, else
  ``created_at``.
- anything else (``ping``, other events, other actions): recorded and ignored.

Re-runs (``run_attempt``). GitHub keeps a run's id when it is re-run and raises
``run_attempt``. The external id stays the run id, and the gateway's fold does the rest: the
re-run's ``requested`` event is newer than the failure it follows, so it opens the job's next
attempt (``attempt`` + 1), and the old attempt's late events, all older than its failure,
stay stale. A re-run after *success* is not followed: ``complete`` is terminal, so those events
are recorded as stale. Re-run jobs get new job ids, so a ``workflow_job`` re-run is a new
external id: link it with ``POST /api/jobs/<id>/attempts``. ``run_attempt`` is shown in the
result and in each event's type.

Status read (reconciliation): ``GET {api_base}/repos/{owner}/{repo}/actions/runs/{id}`` with a
token from ``api_key_env`` (fine-grained, "Actions: read") as a bearer token; the source's
``repository`` option (``owner/repo``) names the repository, since a run's id does not
(``api_base`` defaults to ``https://api.github.com``). ``status`` maps by ``RUN_STATUS_STATES``,
a completed run by its ``conclusion`` (``CONCLUSION_STATES``); the time is ``updated_at``.
Only workflow runs are read: a source that follows ``workflow_job`` ids gets a 404 and is not
reconciled (its jobs stall as before).
"""

from __future__ import annotations

import hashlib
import hmac
import re
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
    bearer,
    constant_time_in,
    json_body,
    read_event_id,
    utc_from_iso,
    utc_from_unix,
)
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"

Q, P, C, F = State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED

#: action (for workflow_run and workflow_job) -> state; ``completed`` is decided by conclusion
ACTION_STATES: Mapping[str, State] = {
    "requested": Q,
    "queued": Q,
    "waiting": Q,  # waiting for an environment's approval
    "pending": Q,
    "in_progress": P,
}

#: ``conclusion`` of a completed run or job -> state
CONCLUSION_STATES: Mapping[str, State] = {
    "success": C,
    "neutral": C,
    "skipped": C,
    "failure": F,
    "cancelled": F,
    "timed_out": F,
    "action_required": F,
    "startup_failure": F,
    "stale": F,
}

#: failing conclusion -> human words for the error message (the conclusion itself is the code)
CONCLUSION_WORDS: Mapping[str, str] = {
    "failure": "failed",
    "cancelled": "was cancelled",
    "timed_out": "timed out",
    "action_required": "needs an action (approval or configuration)",
    "startup_failure": "failed to start",
    "stale": "went stale",
}

OBJECTS = ("workflow_run", "workflow_job")
#: status read: a workflow run's ``status`` -> state; ``completed`` is decided by conclusion
RUN_STATUS_STATES: Mapping[str, State] = {
    "requested": Q,
    "queued": Q,
    "pending": Q,
    "waiting": Q,
    "in_progress": P,
}
DEFAULT_API_BASE = "https://api.github.com"
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}\Z")
MAX_ID = 255


def _str(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "" or len(str(value)) > MAX_ID:
        raise PayloadError("the run or job id is missing")
    return str(value)


def step_progress(steps: Any) -> dict[str, Any] | None:
    """A job's steps as progress: the running step's number of the total, and its name."""
    if not isinstance(steps, list) or not steps:
        return None
    steps = [s for s in steps if isinstance(s, dict)]
    if not steps:
        return None
    running = next((i for i, s in enumerate(steps) if s.get("status") == "in_progress"), None)
    if running is not None:
        return {"current": running + 1, "total": len(steps), "step": _str(steps[running].get("name"))}
    done = sum(1 for s in steps if s.get("status") == "completed")
    return {"current": done, "total": len(steps), "step": None}


class GitHubAdapter(Adapter):
    """GitHub Actions workflow runs and jobs, re-runs included."""

    name = "github"
    event_id_signed = False  # the delivery id is a header outside the signature
    options_schema = {"repository": str}

    def __init__(self, options: Mapping[str, Any] | None = None, *, tolerance: int = 300):
        super().__init__(options, tolerance=tolerance)
        repository = self.options.get("repository")
        if repository is not None and (not isinstance(repository, str) or not REPOSITORY_RE.match(repository)):
            raise ValueError("repository: expected owner/repo")

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return ([(f"run `status` `{status}`", s.value) for status, s in RUN_STATUS_STATES.items()]
                + [(f"run `completed`, conclusion `{c}`", s.value) for c, s in CONCLUSION_STATES.items()])

    def status_unavailable(self) -> str | None:
        return None if self.options.get("repository") else "the repository option (owner/repo) is not set"

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /repos/{owner}/{repo}/actions/runs/{id}``."""
        repository = self.options.get("repository")
        if not repository or not external_id.isdigit():
            return None
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", **bearer(api_key)}
        return api_request(self, DEFAULT_API_BASE, f"/repos/{repository}/actions/runs/{quote(external_id, safe='')}", headers)

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        run = api_answer("GitHub", status, body)
        word, conclusion = run.get("status"), run.get("conclusion")
        if str(run.get("id")) != external_id or not isinstance(word, str) or not word:
            raise PayloadError("the answer is not the workflow run asked for, with a status")
        if word == "completed":
            if not isinstance(conclusion, str) or not conclusion:
                raise PayloadError("a completed run has no conclusion")
            state: State | None = CONCLUSION_STATES.get(conclusion, F)
            word = f"completed.{conclusion[:40]}"
        else:
            state = RUN_STATUS_STATES.get(word)
        if state is None:
            raise PayloadError(f"unknown run status {word[:40]!r}")
        attempt = run.get("run_attempt")
        attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and 0 < attempt < 10**6 else None
        at = self._occurred_at("workflow_run", run, "")
        return [ProviderEvent(
            event_id=read_event_id(external_id, f"{word}#{attempt or 1}", at), external_id=external_id, occurred_at=at, state=state,
            type=f"api.workflow_run.{word}" + (f"#{attempt}" if attempt else ""),
            error=self._error("run", run, str(conclusion)) if state is F else None,
            result=self._result(run, attempt) if state is C else None, label=self._label("workflow_run", run))]

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return ([(f"`{'` / `'.join(OBJECTS)}` action `{action}`", s.value) for action, s in ACTION_STATES.items()]
                + [(f"action `completed`, conclusion `{c}`", s.value) for c, s in CONCLUSION_STATES.items()]
                + [("any other conclusion", F.value)])

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        header = request.header(SIGNATURE_HEADER)
        if not header:
            raise SignatureError("missing X-Hub-Signature-256 header")
        scheme, _, given = header.strip().partition("=")
        if scheme != "sha256" or len(given) != 64:
            raise SignatureError("X-Hub-Signature-256 is not sha256=<64 hex digits>")
        expected = [hmac.new(secret.encode("utf-8"), request.body, hashlib.sha256).hexdigest() for secret in secrets]
        if not constant_time_in(given.lower().encode("ascii", "replace"), expected):
            raise SignatureError("no signature matches any active secret")

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        delivery = request.header(DELIVERY_HEADER)
        if not delivery or len(delivery) > MAX_ID:
            raise PayloadError("X-GitHub-Delivery header missing")
        event = (request.header(EVENT_HEADER) or "").strip()
        body = json_body(request)
        if not isinstance(body, dict):
            raise PayloadError("a GitHub webhook body is a JSON object")
        action = body.get("action")
        if event not in OBJECTS:
            return [self._ignored(delivery, event, action, request)]
        obj = body.get(event)
        if not isinstance(obj, dict):
            raise PayloadError(f"{event} object missing")
        if not isinstance(action, str) or not action:
            raise PayloadError("action missing")
        external_id = _id(obj.get("id"))
        attempt = obj.get("run_attempt")
        attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and 0 < attempt < 10**6 else None
        conclusion = obj.get("conclusion")
        if action == "completed":
            if not isinstance(conclusion, str) or not conclusion:
                raise PayloadError("a completed run or job has no conclusion")
            state: State | None = CONCLUSION_STATES.get(conclusion, F)
        else:
            state = ACTION_STATES.get(action)
        kind = "run" if event == "workflow_run" else "job"
        return [
            ProviderEvent(
                event_id=delivery,
                external_id=external_id,
                occurred_at=self._occurred_at(event, obj, action),
                state=state,
                type=f"{event}.{action[:40]}" + (f"#{attempt}" if attempt else ""),
                progress=step_progress(obj.get("steps")) if state is P and kind == "job" else None,
                error=self._error(kind, obj, str(conclusion)) if state is F else None,
                result=self._result(obj, attempt) if state is C else None,
                label=self._label(event, obj),
            )
        ]

    def _ignored(self, delivery: str, event: str, action: Any, request: WebhookRequest) -> ProviderEvent:
        """Another event (``ping``, ``push``…): recorded under the delivery id, no job state."""
        when = request.received_at or utc_from_unix(0)
        label = f"{event[:60]}.{action[:40]}" if isinstance(action, str) else event[:100]
        return ProviderEvent(event_id=delivery, external_id=delivery, occurred_at=when, state=None, type=label or "unknown")

    @staticmethod
    def _occurred_at(event: str, obj: Mapping[str, Any], action: str) -> datetime:
        if event == "workflow_run":
            keys: tuple[str, ...] = ("updated_at", "run_started_at", "created_at")
        elif action == "completed":
            keys = ("completed_at", "started_at", "created_at")
        elif action == "in_progress":
            keys = ("started_at", "created_at")
        else:
            keys = ("created_at", "started_at")
        for key in keys:
            if obj.get(key) is not None:
                return utc_from_iso(obj[key])
        raise PayloadError(f"{event} has no {keys[0]}")

    @staticmethod
    def _error(kind: str, obj: Mapping[str, Any], conclusion: str) -> dict[str, Any]:
        name = _str(obj.get("name"), 100) or ("workflow run" if kind == "run" else "job")
        message = f"{'Workflow' if kind == 'run' else 'Job'} {name!r} {CONCLUSION_WORDS.get(conclusion, conclusion[:40])}."
        steps = obj.get("steps")
        if isinstance(steps, list):
            failed = next((s for s in steps if isinstance(s, dict) and s.get("conclusion") == "failure"), None)
            if failed is not None and _str(failed.get("name")):
                message += f" Step {failed.get('number', '?')!s:.6}: {_str(failed.get('name'))}."
        return {"code": conclusion[:64], "message": message, "retryable": True}

    @staticmethod
    def _result(obj: Mapping[str, Any], attempt: int | None) -> dict[str, Any]:
        result: dict[str, Any] = {"url": _str(obj.get("html_url"), 2048), "conclusion": _str(obj.get("conclusion"), 64)}
        if attempt:
            result["run_attempt"] = attempt
        return result

    @staticmethod
    def _label(event: str, obj: Mapping[str, Any]) -> str | None:
        name = _str(obj.get("name"), 150)
        if event == "workflow_run":
            number = obj.get("run_number")
            title = _str(obj.get("display_title"), 100)
            base = f"{name} #{number}" if name and isinstance(number, int) else name
            return f"{base}: {title}"[:200] if base and title else base
        workflow = _str(obj.get("workflow_name"), 100)
        return f"{workflow} / {name}"[:200] if workflow and name else name
