"""From a signed POST through real gunicorn to the job JSON, for every state each built-in
adapter maps (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import requests

from tests import signing
from tests.adapters import deliveries as d
from tests.conftest import register


def accepted(base: str, delivery: d.Delivery, status: str = "accepted") -> None:
    r = d.post(base, delivery)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": status}


def state_of(base: str, job_id: str) -> dict[str, Any]:
    return d.job(base, job_id)


# -- Replicate ---------------------------------------------------------------------------------


def test_replicate_prediction_from_starting_to_output(server: Any) -> None:
    pred = d.uid("pred")
    job_id = register(server.url, source="replicate", external_id=pred)["job"]["id"]
    accepted(server.url, d.replicate("starting", pred))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.replicate("processing", pred))
    job = state_of(server.url, job_id)
    assert job["state"] == "processing"
    assert job["progress"] == {"current": 45, "total": 100, "step": "Sampling"}
    accepted(server.url, d.replicate("succeeded", pred))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["progress"] is None
    assert job["result"]["url"].startswith("https://replicate.delivery/") and job["result"]["url"].endswith("out-0.png")
    assert job["label"] == "Replicate replicate/hello-world"


@pytest.mark.parametrize("name, code, words", [("failed", "prediction_failed", "CUDA out of memory"), ("canceled", "canceled", "canceled")])
def test_replicate_failures(server: Any, name: str, code: str, words: str) -> None:
    pred = d.uid("pred")
    job_id = register(server.url, source="replicate", external_id=pred)["job"]["id"]
    accepted(server.url, d.replicate(name, pred))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == code and words in job["error"]["message"]


def test_replicate_duplicate_and_late_processing(server: Any) -> None:
    """A retried final webhook is a duplicate; a log webhook arriving after the end changes nothing."""
    pred = d.uid("pred")
    job_id = register(server.url, source="replicate", external_id=pred)["job"]["id"]
    final = d.replicate("succeeded", pred, msg_id=d.uid("msg_"))
    accepted(server.url, final)
    assert d.post(server.url, final).json() == {"status": "duplicate"}
    accepted(server.url, d.replicate("processing", pred))  # recorded, stale
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["version"] == 2


# -- GitHub Actions ------------------------------------------------------------------------------


def test_github_workflow_run_fails_then_rerun_succeeds(server: Any) -> None:
    run_id = random.randint(10**9, 10**12)
    job_id = register(server.url, source="github", external_id=str(run_id))["job"]["id"]
    accepted(server.url, d.github("workflow_run_requested", run_id))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.github("workflow_run_in_progress", run_id))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.github("workflow_run_completed_failure", run_id))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == "failure" and job["attempt"] == 1
    accepted(server.url, d.github("workflow_run_rerun_requested", run_id))
    job = state_of(server.url, job_id)
    assert job["state"] == "queued" and job["attempt"] == 2
    accepted(server.url, d.github("workflow_run_rerun_completed_success", run_id))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["attempt"] == 2
    assert job["result"]["run_attempt"] == 2 and job["result"]["url"].startswith("https://github.com/octocat/Hello-World/actions/runs/")
    assert job["label"] == "Build #562: Update README.md"


def test_github_workflow_job_steps_are_progress(server: Any) -> None:
    gh_job = random.randint(10**9, 10**12)
    job_id = register(server.url, source="github", external_id=str(gh_job))["job"]["id"]
    accepted(server.url, d.github("workflow_job_queued", gh_job))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.github("workflow_job_in_progress", gh_job))
    job = state_of(server.url, job_id)
    assert job["state"] == "processing"
    assert job["progress"] == {"current": 3, "total": 7, "step": "Run tests"}
    accepted(server.url, d.github("workflow_job_completed_success", gh_job))
    assert state_of(server.url, job_id)["state"] == "complete"


@pytest.mark.parametrize("conclusion", ["cancelled", "timed_out", "action_required"])
def test_github_job_conclusions_fail_with_their_code(server: Any, conclusion: str) -> None:
    gh_job = random.randint(10**9, 10**12)
    job_id = register(server.url, source="github", external_id=str(gh_job))["job"]["id"]
    accepted(server.url, d.github(f"workflow_job_completed_{conclusion}", gh_job))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == conclusion and job["error"]["retryable"] is True


def test_github_redelivery_is_duplicate_and_ping_is_ignored(server: Any) -> None:
    run_id = random.randint(10**9, 10**12)
    register(server.url, source="github", external_id=str(run_id))
    delivery = d.github("workflow_run_requested", run_id, delivery=d.uid())
    accepted(server.url, delivery)
    assert d.post(server.url, delivery).json() == {"status": "duplicate"}
    accepted(server.url, d.github("ping", 0, delivery=d.uid()), status="ignored")


# -- Twilio --------------------------------------------------------------------------------------


def test_twilio_message_behind_a_proxy(server: Any) -> None:
    """Signed for the public URL (the source's public_url), posted to the internal address."""
    sid = "SM" + d.uid()[:32].ljust(32, "0")
    job_id = register(server.url, source="twilio", external_id=sid)["job"]["id"]
    accepted(server.url, d.twilio("message_queued", sid))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.twilio("message_sent", sid))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.twilio("message_delivered", sid))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["result"] == {"sid": sid, "status": "delivered"}
    # Twilio sends no event id: a replayed callback derives the same one
    assert d.post(server.url, d.twilio("message_delivered", sid)).json() == {"status": "duplicate"}


@pytest.mark.parametrize("name, code, words", [("message_undelivered", "undelivered", "30003"), ("message_failed", "failed", "30008")])
def test_twilio_message_failures(server: Any, name: str, code: str, words: str) -> None:
    sid = "SM" + d.uid()[:32].ljust(32, "0")
    job_id = register(server.url, source="twilio", external_id=sid)["job"]["id"]
    accepted(server.url, d.twilio(name, sid))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == code and words in job["error"]["message"]


def test_twilio_call_signed_for_the_url_as_received(server: Any) -> None:
    sid = "CA" + d.uid()[:32].ljust(32, "0")
    url = server.url + "/webhooks/twilio-direct"
    job_id = register(server.url, source="twilio-direct", external_id=sid)["job"]["id"]
    accepted(server.url, d.twilio("call_initiated", sid, source="twilio-direct", url=url))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.twilio("call_ringing", sid, source="twilio-direct", url=url))
    accepted(server.url, d.twilio("call_in_progress", sid, source="twilio-direct", url=url))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.twilio("call_completed", sid, source="twilio-direct", url=url))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["result"]["duration_seconds"] == 60
    assert job["state_changed_at"] == "2026-11-28T12:01:05.000Z"  # the callback's own Timestamp


def test_twilio_url_with_an_encoded_query_string(server: Any) -> None:
    """The query string is signed as Twilio sent it, percent-escapes and all."""
    sid = "SM" + d.uid()[:32].ljust(32, "0")
    job_id = register(server.url, source="twilio-direct", external_id=sid)["job"]["id"]
    query = "?tenant=caf%C3%A9&note=a%20b&mark=%E2%9C%93"
    path, body, headers = d.twilio("message_delivered", sid, source="twilio-direct", url=server.url + "/webhooks/twilio-direct" + query)
    r = requests.post(server.url + path + query, data=body, headers=headers, timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "accepted"}, r.text
    assert state_of(server.url, job_id)["state"] == "complete"


@pytest.mark.parametrize("name, code", [("call_busy", "busy"), ("call_no_answer", "no_answer")])
def test_twilio_call_failures(server: Any, name: str, code: str) -> None:
    sid = "CA" + d.uid()[:32].ljust(32, "0")
    job_id = register(server.url, source="twilio", external_id=sid)["job"]["id"]
    accepted(server.url, d.twilio(name, sid))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == code


def test_twilio_signature_for_the_wrong_url_is_refused(server: Any) -> None:
    """Behind a proxy the internal URL is not what Twilio signed: signed for it, it fails."""
    sid = "SM" + d.uid()[:32].ljust(32, "0")
    r = d.post(server.url, d.twilio("message_sent", sid, url=server.url + "/webhooks/twilio"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"


# -- Mux -----------------------------------------------------------------------------------------


def test_mux_direct_upload_to_playback_url(server: Any) -> None:
    upload, asset = d.uid("up"), d.uid("as")
    job_id = register(server.url, source="mux", external_id=upload)["job"]["id"]
    accepted(server.url, d.mux("upload_created", upload, asset))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.mux("upload_asset_created", upload, asset))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.mux("asset_created", upload, asset))
    accepted(server.url, d.mux("asset_ready", upload, asset))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete"
    assert job["result"]["url"] == "https://stream.mux.com/uNbxnGLKJ00yfbijDO8COxTOyVKT01xpxW.m3u8"
    assert job["result"]["asset_id"] == asset


@pytest.mark.parametrize("name, code", [("asset_errored", "invalid_input"), ("upload_cancelled", "upload_cancelled")])
def test_mux_failures(server: Any, name: str, code: str) -> None:
    upload, asset = d.uid("up"), d.uid("as")
    job_id = register(server.url, source="mux", external_id=upload)["job"]["id"]
    accepted(server.url, d.mux(name, upload, asset))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == code


def test_mux_duplicate_after_2xx(server: Any) -> None:
    upload, asset = d.uid("up"), d.uid("as")
    register(server.url, source="mux", external_id=upload)
    delivery = d.mux("asset_ready", upload, asset, event_id=d.uid())
    accepted(server.url, delivery)
    assert d.post(server.url, delivery).json() == {"status": "duplicate"}


# -- Render --------------------------------------------------------------------------------------


def test_render_deploy_with_status_in_the_body(server: Any) -> None:
    deploy = d.uid("dep-")
    job_id = register(server.url, source="render", external_id=deploy)["job"]["id"]
    accepted(server.url, d.render("deploy_started", deploy))
    job = state_of(server.url, job_id)
    assert job["state"] == "processing" and job["progress"]["step"] == "Deploying"
    accepted(server.url, d.render("build_ended_succeeded", deploy))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.render("deploy_ended_succeeded", deploy))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["result"]["id"] == deploy


@pytest.mark.parametrize("name, code", [("deploy_ended_failed", "deploy_failed"), ("job_run_ended_failed", "job_run_failed")])
def test_render_failures(server: Any, name: str, code: str) -> None:
    thing = d.uid("dep-" if name.startswith("deploy") else "job-")
    job_id = register(server.url, source="render", external_id=thing)["job"]["id"]
    accepted(server.url, d.render(name, thing))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == code


def test_render_thin_event_is_acknowledged_without_a_state(server: Any) -> None:
    """The documented thin body names no deploy: it is acknowledged and recorded, the job unmoved
    until the details fetched from Render's API say more (tests/adapters/test_render.py)."""
    deploy = d.uid("dep-")
    job_id = register(server.url, source="render", external_id=deploy)["job"]["id"]
    r = d.post(server.url, d.render("deploy_ended_thin", deploy))
    assert r.status_code == 200 and r.json()["status"] in ("ignored", "accepted")
    job = state_of(server.url, job_id)
    assert job["state"] == "queued" and job["version"] == 1


# -- Stripe and standard -------------------------------------------------------------------------


def test_stripe_payment_intent_states(server: Any) -> None:
    pi = d.uid("pi_")
    job_id = register(server.url, source="stripe", external_id=pi)["job"]["id"]
    accepted(server.url, d.stripe("payment_intent_created", pi))
    assert state_of(server.url, job_id)["state"] == "queued"
    accepted(server.url, d.stripe("payment_intent_processing", pi))
    assert state_of(server.url, job_id)["state"] == "processing"
    accepted(server.url, d.stripe("payment_intent_succeeded", pi))
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["result"]["amount"] == 2000 and job["label"] == "Order #1042"


def test_stripe_failure_and_ignored_type(server: Any) -> None:
    pi = d.uid("pi_")
    job_id = register(server.url, source="stripe", external_id=pi)["job"]["id"]
    accepted(server.url, d.stripe("payment_intent_payment_failed", pi))
    job = state_of(server.url, job_id)
    assert job["state"] == "failed" and job["error"]["code"] == "insufficient_funds"
    accepted(server.url, d.stripe("customer_created", d.uid("cus_")), status="ignored")


def test_standard_states(server: Any) -> None:
    ext = d.uid("import-")
    job_id = register(server.url, source="worker", external_id=ext)["job"]["id"]
    accepted(server.url, d.standard("queued", ext))
    job = state_of(server.url, job_id)
    assert job["state"] == "queued" and job["queue"]["position"] == 4
    accepted(server.url, d.standard("processing", ext))
    assert state_of(server.url, job_id)["progress"] == {"current": 1240, "total": 4000, "step": "importing rows"}
    accepted(server.url, d.standard("failed", ext))
    assert state_of(server.url, job_id)["error"]["code"] == "bad_row"
    accepted(server.url, d.standard("complete", ext))  # newer than the failure: the next attempt, complete
    job = state_of(server.url, job_id)
    assert job["state"] == "complete" and job["attempt"] == 2 and job["result"] == {"url": "https://app.example.com/imports/42"}


# -- what every adapter refuses ------------------------------------------------------------------

BUILDERS = {
    "replicate": lambda: d.replicate("succeeded", d.uid("pred")),
    "github": lambda: d.github("workflow_run_requested", random.randint(1, 10**9)),
    "twilio": lambda: d.twilio("message_sent", "SM" + d.uid()),
    "mux": lambda: d.mux("asset_ready", d.uid("up"), d.uid("as")),
    "render": lambda: d.render("deploy_started", d.uid("dep-")),
    "stripe": lambda: d.stripe("payment_intent_succeeded", d.uid("pi_")),
    "worker": lambda: d.standard("complete", d.uid("x")),
}


@pytest.mark.parametrize("source", sorted(BUILDERS))
def test_tampered_body_is_401_and_stores_nothing(server: Any, source: str) -> None:
    path, body, headers = BUILDERS[source]()
    r = requests.post(server.url + path, data=body + b" ", headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"
    r = requests.post(server.url + path, data=body, headers={"Content-Type": headers.get("Content-Type", "")}, timeout=10)
    assert r.status_code == 401


UNREADABLE = {
    "replicate": lambda body: ("/webhooks/replicate", body, signing.standard_headers(signing.REPLICATE_SECRET, body.decode())),
    "render": lambda body: ("/webhooks/render", body, signing.standard_headers(signing.RENDER_SECRET, body.decode())),
    "github": lambda body: ("/webhooks/github", body, signing.github_headers(signing.GITHUB_SECRET, body, "workflow_run")),
    "mux": lambda body: ("/webhooks/mux", body, signing.mux_headers(signing.MUX_SECRET, body)),
    "stripe": lambda body: ("/webhooks/stripe", body, signing.stripe_headers(signing.STRIPE_SECRET, body.decode())),
}


@pytest.mark.parametrize("source", sorted(UNREADABLE))
@pytest.mark.parametrize("body", [b"[]", b"{\"id\": 1}", b"not json", json.dumps({"data": {"object": None}, "workflow_run": []}).encode()])
def test_verified_but_unreadable_is_400(server: Any, source: str, body: bytes) -> None:
    r = d.post(server.url, UNREADABLE[source](body))
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_twilio_unreadable_form_is_400(server: Any) -> None:
    params = {"AccountSid": "AC1", "Foo": "bar"}  # neither MessageSid nor CallSid
    from urllib.parse import urlencode

    r = requests.post(server.url + "/webhooks/twilio", data=urlencode(params).encode(),
                      headers=signing.twilio_headers(signing.TWILIO_TOKEN, signing.TWILIO_PUBLIC_URL, params), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unparseable_body"
