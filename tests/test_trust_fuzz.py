"""Bad input, fuzzed with hypothesis over every route on SQLite and PostgreSQL.

Rules that must hold for all inputs: never a 500; every error in the contract's JSON shape;
no state change without a valid signature (webhooks) or credentials (API). Signed garbage goes
past verification into the parsers: random bytes, invalid UTF-8, deep and huge JSON, wrong
types in every field, any content type. ``TRUST_FUZZ_EXAMPLES`` raises the count (``make fuzz``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import string
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.models import Event, Job, JobKey
from tests.conftest import API_KEY, ARTIFACTS, register
from tests.signing import STANDARD_SECRET, STRIPE_SECRET, standard_headers, stripe_headers

EXAMPLES = int(os.environ.get("TRUST_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
COUNTS: dict[str, int] = {"cases": 0, "500s": 0}
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "fuzz-counts.json"
    path.write_text(json.dumps(COUNTS))
    print(f"\nfuzz: {COUNTS['cases']} cases, {COUNTS['500s']} answers of 500")


def snapshot(app: Any) -> tuple[int, ...]:
    """Events, jobs, keys and the sum of versions: any state change moves one of them."""
    with app.extensions["gateway"].store.reading() as s:
        return (s.scalar(select(func.count()).select_from(Event)), s.scalar(select(func.count()).select_from(Job)),
                s.scalar(select(func.count()).select_from(JobKey)), s.scalar(select(func.coalesce(func.sum(Job.version), 0))))


def check(r: Any) -> None:
    """Never a 500; every error is ``{"error": {"code", "message"}}``."""
    COUNTS["cases"] += 1
    if r.status_code >= 500:
        COUNTS["500s"] += 1
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.get_data(as_text=True)[:300])
    if r.status_code >= 400:
        body = r.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), r.get_data(as_text=True)[:300]
        assert isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str)


# -- strategies ---------------------------------------------------------------------------------

JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=50)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FIELD_VALUES = JSON | st.sampled_from(["queued", "processing", "complete", "failed", "2026-11-28T12:00:00Z", "", "\x00", "9" * 400, "2026-13-45T99:99:99Z", "NaN"])
CANONICAL = st.fixed_dictionaries({}, optional={
    k: FIELD_VALUES for k in ("external_id", "state", "occurred_at", "progress", "queue", "error", "result", "label", "event_id")
}) | st.fixed_dictionaries({
    "external_id": st.text(min_size=1, max_size=20), "state": st.sampled_from(["queued", "processing", "complete", "failed"]),
    "occurred_at": st.sampled_from(["2026-11-28T12:00:00Z", "2026-11-28T12:00:00.123+01:00", "2026-11-28"]),
}, optional={
    "progress": st.fixed_dictionaries({}, optional={"current": FIELD_VALUES, "total": FIELD_VALUES, "step": FIELD_VALUES}),
    "queue": st.fixed_dictionaries({}, optional={"name": FIELD_VALUES, "position": FIELD_VALUES, "total": FIELD_VALUES}),
    "error": st.fixed_dictionaries({}, optional={"code": FIELD_VALUES, "message": FIELD_VALUES, "retryable": FIELD_VALUES}),
    "result": FIELD_VALUES, "label": FIELD_VALUES,
})


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


BODIES = st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=200).map(lambda b: b + b"\xff\xfe\xc3\x28"),  # invalid UTF-8
    JSON.map(lambda v: json.dumps(v).encode()),
    CANONICAL.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(_deep),
    st.sampled_from([b"", b"{}", b"null", b"[]", b'{"state": NaN}', b'{"a": Infinity}', b"\xef\xbb\xbf{}", b'{"a":1,"a":2}',
                     b"x" * (1024 * 1024), b'{"x": "' + b"a" * (1024 * 1024 - 10) + b'"}']),
)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/json; charset=latin-1", "", "*/*", "application/json; charset=utf-16"])
HEADER_TEXT = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=60)


# -- webhooks, signed: past verification, into the parsers ------------------------------------------------


def raw_standard_headers(secret: str, body: bytes, msg_id: str) -> dict[str, str]:
    """Standard Webhooks' signature (HMAC-SHA256 of ``id.timestamp.body``) over bytes that are not UTF-8."""
    ts = str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + sig}


@FUZZ
@given(body=BODIES, content_type=CONTENT_TYPES, msg_id=st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=40))
def test_signed_garbage_to_the_standard_adapter(app, client, body: bytes, content_type: str, msg_id: str) -> None:
    try:
        headers = standard_headers(STANDARD_SECRET, body.decode("utf-8"), msg_id="fz_" + msg_id)
    except UnicodeDecodeError:  # the library signs text only: sign the raw bytes with the same HMAC
        headers = raw_standard_headers(STANDARD_SECRET, body, "fz_" + msg_id)
    headers["content-type"] = content_type
    before = snapshot(app)
    r = client.post("/webhooks/auto", data=body, headers=headers)
    check(r)
    assert r.status_code in (200, 400, 401, 413), r.status_code
    if r.status_code != 200:
        assert snapshot(app) == before


@FUZZ
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_signed_garbage_to_the_stripe_adapter(app, client, body: bytes, content_type: str) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    headers = stripe_headers(STRIPE_SECRET, text)
    headers["content-type"] = content_type
    before = snapshot(app)
    r = client.post("/webhooks/stripe", data=body, headers=headers)
    check(r)
    assert r.status_code in (200, 400, 401, 413)
    if r.status_code != 200:
        assert snapshot(app) == before


# -- every route, unsigned and unauthenticated: nothing moves -----------------------------------------------

ROUTES = ["/webhooks/worker", "/webhooks/stripe", "/webhooks/auto", "/webhooks/nosuch", "/api/jobs", "/api/tokens", "/api/jobs/{job}",
          "/api/jobs/{job}/retry", "/api/jobs/{job}/events", "/api/jobs/{job}/attempts", "/api/jobs/{job}/trace", "/api/jobs/{job}/stream",
          "/healthz", "/readyz", "/metrics", "/api/jobs/{job}/%ff%fe", "/api/jobs/job_%00", "/api/../etc/passwd", "/webhooks/" + "a" * 300]
METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND"])
CREDENTIALS = st.one_of(
    st.just({}),
    HEADER_TEXT.map(lambda t: {"Authorization": t}),
    HEADER_TEXT.map(lambda t: {"Authorization": "Bearer " + t}),
    st.just({"Authorization": "Bearer " + "eyJ" + "A" * 5000}),
    st.sampled_from([{"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}, {"Stripe-Signature": "t=1,v1=00"}]),
)


@FUZZ
@given(route=st.sampled_from(ROUTES), method=METHODS, body=BODIES, content_type=CONTENT_TYPES, creds=CREDENTIALS,
       query=st.dictionaries(st.sampled_from(["token", "wait", "since", "x"]), HEADER_TEXT, max_size=3),
       extra=st.dictionaries(st.sampled_from(["If-None-Match", "Last-Event-ID", "Origin", "X-Request-ID", "Content-Encoding", "Accept"]), HEADER_TEXT, max_size=3))
def test_any_request_without_valid_credentials_changes_nothing(app, client, route, method, body, content_type, creds, query, extra) -> None:
    job = app.extensions.setdefault("_fuzz_job", None) or register(client)["job"]["id"]
    app.extensions["_fuzz_job"] = job
    before = snapshot(app)
    r = client.open(route.replace("{job}", job), method=method, data=body if method not in ("GET", "HEAD") else None,
                    query_string=query, headers={**creds, **extra, "Content-Type": content_type})
    if route == "/readyz" and r.status_code == 503:
        assert r.headers["Retry-After"].isdigit()  # not ready: a status document, not an error
    elif method != "HEAD" and r.status_code != 304:
        check(r)
    else:
        assert r.status_code < 500 or r.status_code == 503
    r.close()
    assert snapshot(app) == before


# -- the integrator API with a valid key: bad bodies are 4xx, never 500 -----------------------------------------

API_POSTS = ["/api/jobs", "/api/tokens", "/api/jobs/{job}/events", "/api/jobs/{job}/attempts", "/api/jobs/{job}/retry"]


@FUZZ
@given(route=st.sampled_from(API_POSTS), body=st.one_of(CANONICAL.map(json.dumps), JSON.map(json.dumps),
       st.fixed_dictionaries({}, optional={k: FIELD_VALUES for k in ("source", "external_id", "id", "label", "queue", "job", "scopes", "ttl")}).map(json.dumps),
       BODIES), content_type=CONTENT_TYPES)
def test_integrator_api_with_bad_bodies(app, client, route: str, body: Any, content_type: str) -> None:
    job = app.extensions.setdefault("_fuzz_job", None) or register(client)["job"]["id"]
    app.extensions["_fuzz_job"] = job
    r = client.post(route.replace("{job}", job), data=body, headers={**KEY, "Content-Type": content_type})
    check(r)


# -- regressions the long fuzz runs found ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["external_id", "label", "progress", "error"])
def test_nul_characters_are_refused_or_stored_never_a_500(app, client, field: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL (SQLite can): a signed body carrying one is a
    400 ``unstorable_value`` recorded in the trace there, never a 500, and nothing moves."""
    body: dict[str, Any] = {"external_id": "nul-" + os.urandom(4).hex(), "state": "processing", "occurred_at": "2026-11-28T12:00:00Z"}
    value = "a\x00b"
    body[field] = {"current": 1, "total": 2, "step": value} if field == "progress" else {"code": value, "message": value} if field == "error" else (body["external_id"] + value if field == "external_id" else value)
    if field == "error":
        body["state"] = "failed"
    text = json.dumps(body)
    before = snapshot(app)
    r = client.post("/webhooks/auto", data=text, headers=standard_headers(STANDARD_SECRET, text))
    check(r)
    assert r.status_code in (200, 400)
    if r.status_code == 400:
        assert r.get_json()["error"]["code"] == "unstorable_value"
        assert snapshot(app) == before
    r = client.post("/api/jobs", json={"source": "worker", "external_id": "nul\x00" + os.urandom(4).hex(), "label": value}, headers=KEY)
    check(r)
    assert r.status_code in (201, 400)


@pytest.mark.parametrize("body", [_deep(100_000), b"\xff\xfe", b"[1]", b'{"count": "x"}'])
def test_the_demo_api_with_bad_bodies(db_url: str, tmp_path, body: bytes) -> None:
    """With ``demo = true`` the demo's own endpoint takes anonymous bodies: never a 500."""
    from tests.test_demo import demo_app

    client = demo_app(db_url, tmp_path).test_client()
    r = client.post("/demo/jobs", data=body, headers={"Content-Type": "application/json"})
    check(r)
    assert r.status_code == 400
