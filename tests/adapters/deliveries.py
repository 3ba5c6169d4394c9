"""Signed deliveries built from the provider fixtures, with fresh ids so tests never collide.

Each builder returns ``(path, body bytes, headers)`` ready to POST; signing uses the providers'
own code (tests.signing).
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import requests

from adapters.fixtures import load
from tests import signing
from tests.conftest import API_KEY

Delivery = tuple[str, bytes, dict[str, str]]


def uid(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:20]


def fixture(provider: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(load(provider)[name])


def post(base: str, delivery: Delivery) -> requests.Response:
    path, body, headers = delivery
    return requests.post(base + path, data=body, headers=headers, timeout=10)


def job(base: str, job_id: str) -> dict[str, Any]:
    r = requests.get(f"{base}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def replicate(name: str, prediction_id: str, msg_id: str | None = None) -> Delivery:
    body = fixture("replicate", name)["body"]
    body["id"] = prediction_id
    raw = json.dumps(body)
    return "/webhooks/replicate", raw.encode(), signing.standard_headers(signing.REPLICATE_SECRET, raw, msg_id=msg_id)


def github(name: str, object_id: int, delivery: str | None = None) -> Delivery:
    fx = fixture("github", name)
    body = fx["body"]
    event = fx["headers"]["X-GitHub-Event"]
    if event in body:
        body[event]["id"] = object_id
    raw = json.dumps(body).encode()
    return "/webhooks/github", raw, signing.github_headers(signing.GITHUB_SECRET, raw, event, delivery)


def twilio(name: str, sid: str, *, source: str = "twilio", url: str | None = None) -> Delivery:
    params = fixture("twilio", name)["body"]
    for key in ("MessageSid", "SmsSid", "CallSid"):
        if key in params:
            params[key] = sid
    signed_url = url or signing.TWILIO_PUBLIC_URL
    raw = urlencode(params).encode()
    return f"/webhooks/{source}", raw, signing.twilio_headers(signing.TWILIO_TOKEN, signed_url, params)


def mux(name: str, upload_id: str, asset_id: str, event_id: str | None = None) -> Delivery:
    body = fixture("mux", name)["body"]
    body["id"] = event_id or str(uuid.uuid4())
    data = body["data"]
    if body["object"]["type"] == "upload":
        data["id"] = body["object"]["id"] = upload_id
        if "asset_id" in data:
            data["asset_id"] = asset_id
    else:
        data["id"] = body["object"]["id"] = asset_id
        data["upload_id"] = upload_id
    raw = json.dumps(body).encode()
    return "/webhooks/mux", raw, signing.mux_headers(signing.MUX_SECRET, raw)


def render(name: str, thing_id: str, event_id: str | None = None) -> Delivery:
    body = fixture("render", name)["body"]
    body["data"]["id"] = event_id or uid("evj-")
    for key in ("deployId", "jobId"):
        if key in body["data"]:
            body["data"][key] = thing_id
    raw = json.dumps(body)
    return "/webhooks/render", raw.encode(), signing.standard_headers(signing.RENDER_SECRET, raw)


def stripe(name: str, object_id: str, event_id: str | None = None) -> Delivery:
    body = fixture("stripe", name)["body"]
    body["id"] = event_id or uid("evt_")
    body["data"]["object"]["id"] = object_id
    raw = json.dumps(body)
    return "/webhooks/stripe", raw.encode(), signing.stripe_headers(signing.STRIPE_SECRET, raw)


def standard(name: str, external_id: str) -> Delivery:
    body = fixture("standard", name)["body"]
    body["external_id"] = external_id
    raw = json.dumps(body)
    return "/webhooks/worker", raw.encode(), signing.standard_headers(signing.STANDARD_SECRET, raw)
