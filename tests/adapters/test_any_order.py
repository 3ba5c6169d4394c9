"""The fold makes any order and duplication of one job's events end in the same job (tested in
test_states); that job is the *right* one only if each adapter dates and keys its events well:
GitHub's re-run after the failure, Replicate's snapshots before the end, Mux's upload and asset
under one id. Checked on the fixtures, through the real fold."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from adapters.base import Adapter, ProviderEvent, WebhookRequest
from adapters.fixtures import load
from adapters.github import GitHubAdapter
from adapters.mux import MuxAdapter
from adapters.render import RenderAdapter
from adapters.replicate import ReplicateAdapter
from adapters.standard import StandardAdapter
from adapters.stripe import StripeAdapter
from adapters.twilio import TwilioAdapter
from gateway import states
from tests import signing

CREATED = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)


def _parse(provider: str, name: str, n: int) -> ProviderEvent:
    fx = load(provider)[name]
    body = fx["body"]
    if provider == "twilio":
        raw = urlencode(body).encode()
        headers = signing.twilio_headers(signing.TWILIO_TOKEN, signing.TWILIO_PUBLIC_URL, body)
    else:
        raw = json.dumps(body).encode()
        headers = {**fx["headers"], "webhook-id": f"msg_{n:04d}", "X-GitHub-Delivery": f"delivery-{n}", "webhook-timestamp": "1764331200"}
    adapter: Adapter = {"replicate": ReplicateAdapter, "github": GitHubAdapter, "twilio": TwilioAdapter, "mux": MuxAdapter,
                        "render": RenderAdapter, "stripe": StripeAdapter, "standard": StandardAdapter}[provider]()
    (event,) = adapter.parse(WebhookRequest(raw, headers, url=signing.TWILIO_PUBLIC_URL))
    return event


SEQUENCES: dict[str, tuple[str, list[str], str, int]] = {
    # name: (provider, fixtures in the provider's order, final state, final attempt)
    "replicate": ("replicate", ["starting", "processing", "succeeded"], "complete", 1),
    "replicate-failed": ("replicate", ["starting", "processing", "failed"], "failed", 1),
    "github-rerun": ("github", ["workflow_run_requested", "workflow_run_in_progress", "workflow_run_completed_failure",
                                "workflow_run_rerun_requested", "workflow_run_rerun_completed_success"], "complete", 2),
    "github-job": ("github", ["workflow_job_queued", "workflow_job_in_progress", "workflow_job_completed_success"], "complete", 1),
    "twilio-call": ("twilio", ["call_initiated", "call_ringing", "call_in_progress", "call_completed"], "complete", 1),
    "mux-upload": ("mux", ["upload_created", "upload_asset_created", "asset_created", "asset_ready"], "complete", 1),
    "render": ("render", ["deploy_started", "build_ended_succeeded", "deploy_ended_succeeded"], "complete", 1),
    "stripe": ("stripe", ["payment_intent_created", "payment_intent_processing", "payment_intent_succeeded"], "complete", 1),
    "standard": ("standard", ["queued", "processing", "failed", "complete"], "complete", 2),
}


def _fold(provider: str, events: list[ProviderEvent]) -> states.JobView:
    folded = [states.Event(uid=f"{provider}:{e.event_id}", occurred_at=e.occurred_at, state=e.state, key=(provider, e.external_id),
                           progress=e.progress, queue=e.queue, error=e.error, result=e.result, label=e.label) for e in events]
    view, _ = states.fold(CREATED, folded)
    return view


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_in_order_ends_where_the_provider_says(name: str) -> None:
    provider, names, final, attempt = SEQUENCES[name]
    events = [_parse(provider, n, i) for i, n in enumerate(names)]
    assert len({e.external_id for e in events}) == 1, "one job: one external id"
    view = _fold(provider, events)
    assert (view.state.value, view.attempt) == (final, attempt)


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_event_times_agree_with_the_providers_sequence(name: str) -> None:
    """The fold sorts by (occurred_at, rank, id); that order must be the provider's own, so a
    late or duplicated delivery lands where it belongs whatever order they arrive in."""
    provider, names, _, _ = SEQUENCES[name]
    events = [_parse(provider, n, i) for i, n in enumerate(names)]
    keys = [states.Event(uid=e.event_id, occurred_at=e.occurred_at, state=e.state).sort_key() for e in events]
    assert keys == sorted(keys), [k[:2] for k in keys]


# -- status reads (issue 21): the API's word and late webhooks, in any order -------------------------

#: name: (provider, webhook fixtures, the status-read answer that ends it, final state)
WITH_READS: dict[str, tuple[str, list[str], str, str]] = {
    "replicate": ("replicate", ["starting", "processing", "succeeded"], "prediction_succeeded", "complete"),
    "replicate-failed": ("replicate", ["starting", "processing"], "prediction_failed", "failed"),
    "github": ("github", ["workflow_run_requested", "workflow_run_in_progress", "workflow_run_completed_success"], "run_completed_success", "complete"),
    "stripe": ("stripe", ["payment_intent_created", "payment_intent_processing", "payment_intent_succeeded"], "payment_intent_succeeded", "complete"),
    "twilio": ("twilio", ["message_queued", "message_sent"], "message_delivered", "complete"),
    "mux": ("mux", ["asset_created"], "asset_ready", "complete"),
}
READ_AT = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)


def _read(provider: str, name: str, external_id: str) -> list[ProviderEvent]:
    """The status-read answer's events, the fixture's id swapped for the webhooks' one."""
    from adapters.fixtures import load_api

    fx = load_api(provider)[name]
    body = json.dumps(fx["body"]).replace(str(fx["external_id"]), external_id).encode()
    adapter: Adapter = {"replicate": ReplicateAdapter, "github": GitHubAdapter, "twilio": TwilioAdapter, "mux": MuxAdapter,
                        "stripe": StripeAdapter}[provider]()
    return adapter.parse_status(external_id, 200, body, READ_AT)


@pytest.mark.parametrize("name", sorted(WITH_READS))
def test_events_read_from_the_api_and_late_webhooks_fold_to_the_same_job_in_any_order(name: str) -> None:
    provider, names, read, final = WITH_READS[name]
    hooks = [_parse(provider, n, i) for i, n in enumerate(names)]
    (external_id,) = {e.external_id for e in hooks}
    events = hooks + _read(provider, read, external_id)
    folded = [states.Event(uid=f"{provider}:{e.event_id}", occurred_at=e.occurred_at, state=e.state, key=(provider, e.external_id),
                           kind=states.Kind.RECONCILE if e.event_id.startswith("read:") else states.Kind.PROVIDER,
                           progress=e.progress, queue=e.queue, error=e.error, result=e.result, label=e.label) for e in events]
    view = states.fold(CREATED, folded)[0]
    assert all(states.fold(CREATED, list(order))[0] == view for order in itertools.permutations(folded))
    assert view.state.value == final and view.attempt == 1
