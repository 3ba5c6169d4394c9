"""Replay and forgery: old deliveries, changed bodies and ids, constant-time comparison, and a
rotated-out secret dropped by a reload (real gunicorn, ``kill -HUP``) without a restart."""

from __future__ import annotations

import hmac
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.models import Event, Job
from tests.conftest import ARTIFACTS, register, server_env, write_config
from tests.loadgen import wait_for
from tests.servers import Server
from tests.signing import STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, standard_body, standard_headers, stripe_event, stripe_headers

FUZZ = settings(max_examples=int(os.environ.get("TRUST_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def counts(app: Any) -> tuple[int, int, int]:
    """(events, jobs, sum of job versions): any state change moves one of them."""
    with app.extensions["gateway"].store.reading() as s:
        return (s.scalar(select(func.count()).select_from(Event)), s.scalar(select(func.count()).select_from(Job)),
                s.scalar(select(func.coalesce(func.sum(Job.version), 0))))


@pytest.mark.parametrize("skew", [-301, -3600, 301, 86400 * 365])
def test_valid_delivery_outside_the_tolerance_is_refused(app, client, skew: int) -> None:
    reg = register(client)
    body = standard_body(reg["job"]["external_id"], "processing")
    before = counts(app)
    r = client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body, ts=time.time() + skew))
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_signature"
    sbody = stripe_event("payment_intent.processing", {"id": "pi_" + uuid.uuid4().hex[:10], "object": "payment_intent"})
    r = client.post("/webhooks/stripe", data=sbody, headers=stripe_headers(STRIPE_SECRET, sbody, ts=int(time.time()) + skew))
    assert r.status_code == 401
    assert counts(app) == before


def test_replay_inside_the_tolerance_is_a_duplicate_not_a_second_event(app, client) -> None:
    reg = register(client)
    body = standard_body(reg["job"]["external_id"], "processing")
    headers = standard_headers(STANDARD_SECRET, body)
    assert client.post("/webhooks/worker", data=body, headers=headers).get_json() == {"status": "accepted"}
    before = counts(app)
    assert client.post("/webhooks/worker", data=body, headers=headers).get_json() == {"status": "duplicate"}
    assert counts(app) == before


@FUZZ
@given(data=st.data())
def test_any_change_to_a_signed_delivery_is_refused(app, client, data: st.DataObject) -> None:
    """Flip, insert or delete bytes of the body, or change the signed id or timestamp: 401, nothing moves."""
    reg = register(client)
    body = standard_body(reg["job"]["external_id"], "complete", result={"url": "https://example.com/x"}).encode()
    headers = standard_headers(STANDARD_SECRET, body)
    what = data.draw(st.sampled_from(["flip", "insert", "delete", "id", "timestamp"]))
    if what == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1:]
    elif what == "insert":
        i = data.draw(st.integers(0, len(body)))
        body = body[:i] + data.draw(st.binary(min_size=1, max_size=8)) + body[i:]
    elif what == "delete":
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + body[i + data.draw(st.integers(1, 8)):]
    elif what == "id":
        headers["webhook-id"] = data.draw(st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=40).filter(lambda s: s != headers["webhook-id"]))
    else:
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + data.draw(st.integers(1, 200) | st.integers(-200, -1)))
    before = counts(app)
    r = client.post("/webhooks/worker", data=body, headers=headers)
    assert r.status_code == 401, (what, r.status_code, r.get_data(as_text=True))
    assert counts(app) == before


def test_stripe_signature_on_a_changed_body_is_refused(app, client) -> None:
    body = stripe_event("payment_intent.succeeded", {"id": "pi_" + uuid.uuid4().hex[:10], "object": "payment_intent", "amount": 100})
    headers = stripe_headers(STRIPE_SECRET, body)
    before = counts(app)
    r = client.post("/webhooks/stripe", data=body.replace('"amount": 100', '"amount": 999'), headers=headers)
    assert r.status_code == 401 and counts(app) == before


class CompareSpy:
    """Wraps ``hmac.compare_digest`` and counts its calls (the real function still decides)."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = hmac.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls += 1
        return self.real(a, b)


def test_secrets_are_compared_in_constant_time_against_every_secret(client, monkeypatch) -> None:
    """A wrong signature is checked with hmac.compare_digest against each active secret (no early
    exit on the first byte, no ``==``), and an API key against every configured key."""
    spy = CompareSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = standard_body("ext-ct", "processing")
    headers = standard_headers("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", body)
    assert client.post("/webhooks/worker", data=body, headers=headers).status_code == 401
    assert spy.calls >= 2  # both rotation secrets of the worker source
    spy.calls = 0
    sbody = stripe_event("payment_intent.processing", {"id": "pi_ct", "object": "payment_intent"})
    assert client.post("/webhooks/stripe", data=sbody, headers=stripe_headers("whsec_wrong", sbody)).status_code == 401
    assert spy.calls >= 2  # the Stripe SDK compares with hmac.compare_digest too
    spy.calls = 0
    assert client.get("/api/jobs/job_x/trace", headers={"Authorization": "Bearer not-a-key"}).status_code == 401
    assert spy.calls >= 2  # both API keys


# -- rotation by reload --------------------------------------------------------------------------------



def test_rotated_out_secret_stops_working_after_a_reload(sqlite_url: str, tmp_path: Path) -> None:
    """``secrets_file`` is re-read when gunicorn reloads its workers (SIGHUP to the master): a
    removed secret stops verifying, the kept one goes on, and the master never restarts."""
    secrets = tmp_path / "rotating.secrets"
    secrets.write_text(f"# old and new during the rotation\n{STANDARD_SECRET}\n{STANDARD_SECRET_2}\n")
    cfg = write_config(tmp_path / "gateway.toml", extra_sources=f'[sources.rotating]\nadapter = "standard"\nsecrets_file = "{secrets}"\n')
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(sqlite_url, cfg), log_path=ARTIFACTS / "rotation.log").start()

    def status(secret: str) -> int:
        body = standard_body("ext-" + uuid.uuid4().hex[:8], "processing")
        return requests.post(f"{srv.url}/webhooks/rotating", data=body, headers=standard_headers(secret, body), timeout=10).status_code

    try:
        assert status(STANDARD_SECRET) == 200 and status(STANDARD_SECRET_2) == 200
        master, old_workers = srv.proc.pid, set(srv.worker_pids())
        secrets.write_text(f"{STANDARD_SECRET_2}\n")
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: not (set(srv.worker_pids()) & old_workers) and len(srv.worker_pids()) == srv.workers, 30, "the workers to be replaced")
        wait_for(lambda: status(STANDARD_SECRET_2) == 200, 30, "the new workers to answer")
        answers = {status(STANDARD_SECRET) for _ in range(6)}  # whichever worker answers
        assert answers == {401}
        assert status(STANDARD_SECRET_2) == 200
        assert srv.proc.poll() is None and srv.proc.pid == master
    finally:
        srv.stop()
