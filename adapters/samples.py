"""Sample deliveries for ``gateway send``: a provider fixture (adapters/fixtures) given a fresh
event id, the external id asked for and the current time, then signed as the provider signs it
(adapters/signing.py) with the source's secret.

A sample's name is its fixture's (``payment_intent_succeeded``); the provider's own event type
(``payment_intent.succeeded``, ``video.asset.ready``, ``workflow_run.completed``) names it too
when only one fixture has that type. Only the built-in adapters have samples.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from adapters import fixtures, signing

#: fields holding an event's time in the fixtures; a sample is dated now
TIME_KEYS = frozenset({"created", "created_at", "updated_at", "started_at", "completed_at", "run_started_at", "timestamp",
                       "occurred_at", "Timestamp"})
#: fixtures that are not deliveries (Render's Events API answers, fetched for thin events)
NOT_DELIVERIES = ("api_event_",)


@dataclass(frozen=True)
class Sample:
    """One fixture a source can send: its name, the provider's event type and the state it maps to."""

    adapter: str
    name: str
    event_type: str
    state: str | None
    description: str
    fixture: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """A signed delivery ready to POST to ``/webhooks/<source>``."""

    body: bytes
    headers: dict[str, str]
    external_id: str
    event_type: str


def samples(adapter: str) -> list[Sample]:
    """Every sample of a built-in adapter, in fixture order; [] for an adapter with none."""
    folder = "standard" if adapter == "standard" else adapter
    if adapter not in _BUILDERS:
        return []
    out = []
    for name, fx in fixtures.load(folder).items():
        if name.startswith(NOT_DELIVERIES):
            continue
        out.append(Sample(adapter, name, _EVENT_TYPES[adapter](fx), fx["expect"]["state"], fx.get("description", ""), fx))
    return out


def find_sample(adapter: str, wanted: str) -> Sample:
    """The sample named ``wanted`` (fixture name or the provider's event type, ``.`` or ``_``);
    KeyError with the choices when none or several match."""
    options = samples(adapter)
    if not options:
        raise KeyError(f"adapter {adapter!r} has no sample events (only the built-in adapters do)")
    key = _norm(wanted)
    by_name = [s for s in options if _norm(s.name) == key]
    by_type = [s for s in options if _norm(s.event_type) == key]
    found = by_name or by_type
    if len(found) == 1:
        return found[0]
    if found:
        raise KeyError(f"{wanted!r} is the type of several samples: {', '.join(s.name for s in found)}")
    import difflib

    close = difflib.get_close_matches(key, [_norm(s.name) for s in options] + [_norm(s.event_type) for s in options], n=3)
    hint = f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""
    raise KeyError(f"no sample {wanted!r} for adapter {adapter!r}{hint}; `gateway send --list <source>` shows them")


def build(sample: Sample, secret: str, *, external_id: str | None = None, url: str = "", now: float | None = None) -> Delivery:
    """The sample re-identified (``external_id``, or a fresh one shaped like the fixture's), dated
    ``now`` and signed with ``secret``; ``url`` is the URL the provider signs (Twilio)."""
    now = time.time() if now is None else now
    fx = copy.deepcopy(sample.fixture)
    body = _redate(fx["body"], now)
    return _BUILDERS[sample.adapter](fx, body, secret, external_id, url, int(now), sample.event_type)


# -- per provider ---------------------------------------------------------------------------------


def _stripe(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    obj = body["data"]["object"]
    obj["id"] = ext or _fresh_like(obj["id"])
    body["id"] = "evt_" + uuid.uuid4().hex[:24]
    raw = json.dumps(body)
    return Delivery(raw.encode(), signing.stripe_headers(secret, raw, now), obj["id"], etype)


def _standard(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    body["external_id"] = ext or _fresh_like(body["external_id"])
    raw = json.dumps(body)
    return Delivery(raw.encode(), signing.standard_headers(secret, raw, ts=now), body["external_id"], etype)


def _replicate(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    body["id"] = ext or uuid.uuid4().hex[:26]
    raw = json.dumps(body)
    return Delivery(raw.encode(), signing.standard_headers(secret, raw, ts=now), body["id"], etype)


def _render(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    data = body["data"]
    data["id"] = "evj-" + uuid.uuid4().hex[:20]
    keys = [k for k in ("deployId", "jobId", "buildId") if k in data]
    ext = ext or _fresh_like(data[keys[0]]) if keys else ext or data["serviceId"]
    for key in keys:
        data[key] = ext
    raw = json.dumps(body)
    return Delivery(raw.encode(), signing.standard_headers(secret, raw, ts=now), ext, etype)


def _github(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    event = fx["headers"]["X-GitHub-Event"]
    external = ext or str(uuid.uuid4().int % 10**10)
    if isinstance(body.get(event), dict):
        body[event]["id"] = int(external) if external.isdigit() else external
    raw = json.dumps(body).encode()
    delivery = str(uuid.uuid4())
    return Delivery(raw, signing.github_headers(secret, raw, event, delivery), external if event in body else delivery, etype)


def _twilio(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    params = {k: str(v) for k, v in body.items()}
    sid_keys = [k for k in ("MessageSid", "SmsSid", "CallSid") if k in params]
    ext = ext or params[sid_keys[0]][:2] + uuid.uuid4().hex
    for key in sid_keys:
        params[key] = ext
    return Delivery(urlencode(params).encode(), signing.twilio_headers(secret, url, params), ext, etype)


def _mux(fx: dict[str, Any], body: Any, secret: str, ext: str | None, url: str, now: int, etype: str) -> Delivery:
    body["id"] = str(uuid.uuid4())
    data = body["data"]
    upload_id = ext or uuid.uuid4().hex
    if body["object"]["type"] == "upload":
        data["id"] = body["object"]["id"] = upload_id
        if "asset_id" in data:
            data["asset_id"] = uuid.uuid4().hex
    else:
        data["id"] = body["object"]["id"] = uuid.uuid4().hex
        data["upload_id"] = upload_id
    raw = json.dumps(body).encode()
    return Delivery(raw, signing.mux_headers(secret, raw, now), upload_id, etype)


def _github_type(fx: dict[str, Any]) -> str:
    event, body = fx["headers"]["X-GitHub-Event"], fx["body"]
    return f"{event}.{body['action']}" if "action" in body else event


def _twilio_type(fx: dict[str, Any]) -> str:
    body = fx["body"]
    return f"call.{body['CallStatus']}" if "CallStatus" in body else f"message.{body.get('MessageStatus', '')}"


_BUILDERS: dict[str, Callable[..., Delivery]] = {
    "stripe": _stripe, "standard": _standard, "replicate": _replicate, "render": _render,
    "github": _github, "twilio": _twilio, "mux": _mux,
}
_EVENT_TYPES: dict[str, Callable[[dict[str, Any]], str]] = {
    "stripe": lambda fx: fx["body"]["type"], "mux": lambda fx: fx["body"]["type"], "render": lambda fx: fx["body"]["type"],
    "standard": lambda fx: fx["body"]["state"], "replicate": lambda fx: "prediction." + fx["body"]["status"],
    "github": _github_type, "twilio": _twilio_type,
}


def _norm(text: str) -> str:
    return text.strip().lower().replace(".", "_").replace("-", "_")


def _fresh_like(example: str) -> str:
    """A new id shaped like ``example``: its prefix up to the first ``_`` or ``-``, then random hex."""
    for sep in ("_", "-"):
        head, found, _ = example.partition(sep)
        if found and len(head) <= 8:
            return f"{head}{sep}{uuid.uuid4().hex[:20]}"
    return uuid.uuid4().hex[:24]


def _redate(value: Any, now: float) -> Any:
    """``value`` with every event-time field set to ``now``, each in the format it had."""
    if isinstance(value, list):
        return [_redate(v, now) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in TIME_KEYS and item is not None:
            out[key] = _time_like(item, now)
        else:
            out[key] = _redate(item, now)
    return out


def _time_like(example: Any, now: float) -> Any:
    dt = datetime.fromtimestamp(now, tz=UTC)
    if isinstance(example, bool):
        return example
    if isinstance(example, int):
        return int(now)
    if isinstance(example, str) and "," in example:  # RFC 2822 (Twilio's Timestamp)
        return format_datetime(dt)
    if isinstance(example, str):
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return example
