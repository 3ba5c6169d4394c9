"""The stall watchdog: quiet jobs fail as "stalled" (retryable), and a newer real event still wins."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from gateway import states
from gateway.ids import utcnow
from gateway.states import Decision, Event, Kind, Link, State
from tests.conftest import API_KEY, ARTIFACTS, register, server_env
from tests.gwapp import config_file, gw_of, make_app, post_standard
from tests.servers import Server
from tests.signing import STANDARD_SECRET, iso_now

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
K1 = ("slow", "ext-1")
STALL = {"code": "stalled", "message": "no news", "retryable": True}

SLOW_SOURCE = """
[sources.slow]
adapter = "standard"
secrets_env = "WORKER_SECRETS"
stall_after = 60
"""
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ev(uid, ms, state, kind=Kind.PROVIDER, **fields) -> Event:
    return Event(uid=uid, occurred_at=T0 + timedelta(milliseconds=ms), state=state, kind=kind, key=K1 if kind is Kind.PROVIDER else None, **fields)


def fold(events):
    return states.fold(T0 - timedelta(seconds=1), events, [Link(K1, None)], label="job")


# -- the rule (pure) ----------------------------------------------------------------------------------


def test_stall_fails_a_live_job_retryably():
    view, d = fold([ev("p", 0, State.PROCESSING), ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL)])
    assert (view.state, view.attempt, view.error, view.stalled) == (State.FAILED, 1, STALL, True)


def test_newer_real_event_resumes_the_stalled_attempt():
    events = [ev("p", 0, State.PROCESSING), ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL), ev("c", 61_000, State.COMPLETE, result={"n": 1})]
    view, d = fold(events)
    assert (view.state, view.attempt, view.result, view.error) == (State.COMPLETE, 1, {"n": 1}, None)
    assert d["c"] is Decision.APPLIED


def test_newer_progress_resumes_processing_in_the_same_attempt():
    events = [ev("p", 0, State.PROCESSING), ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL),
              ev("q", 61_000, State.PROCESSING, progress={"current": 5, "total": 10})]
    view, _ = fold(events)
    assert (view.state, view.attempt, view.progress, view.stalled) == (State.PROCESSING, 1, {"current": 5, "total": 10}, False)


def test_older_real_event_stays_stale_by_the_ordering_rules():
    events = [ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL), ev("late", 59_000, State.PROCESSING)]
    view, d = fold(events)
    assert view.state is State.FAILED and view.error == STALL


def test_retry_after_a_stall_opens_the_next_attempt():
    events = [ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL), ev("r", 61_000, State.QUEUED, Kind.RETRY)]
    view, _ = fold(events)
    assert (view.state, view.attempt) == (State.QUEUED, 2)


def test_a_real_failure_is_not_provisional():
    events = [ev("f", 0, State.FAILED, error={"code": "x"}), ev("c", 1000, State.COMPLETE)]
    view, _ = fold(events)
    assert (view.state, view.attempt) == (State.COMPLETE, 2)


def test_stall_after_the_job_already_ended_is_stale():
    for end in (State.FAILED, State.COMPLETE):
        view, d = fold([ev("end", 0, end), ev("w", 60_000, State.FAILED, Kind.WATCHDOG, error=STALL)])
        assert d["w"] is Decision.STALE and view.state is end and view.attempt == 1 and not view.stalled


# -- the watchdog over the store ------------------------------------------------------------------------


@pytest.fixture
def slow_app(db_url, tmp_path):
    return make_app(db_url, tmp_path, SLOW_SOURCE)


def job(client, job_id):
    return client.get(f"/api/jobs/{job_id}", headers=AUTH).get_json()


def test_quiet_job_is_stalled_once_and_a_newer_real_event_wins(slow_app):
    client = slow_app.test_client()
    watchdog = gw_of(slow_app).watchdog
    quiet = register(client, "slow")["job"]
    lively = register(client, "slow")["job"]
    other_source = register(client, "worker")["job"]
    post_standard(client, "slow", STANDARD_SECRET, quiet["external_id"], "processing", progress={"current": 1, "total": 9})
    post_standard(client, "slow", STANDARD_SECRET, lively["external_id"], "processing", occurred_at=iso_now(30_000))
    post_standard(client, "worker", STANDARD_SECRET, other_source["external_id"], "processing")
    # the watchdog looks 61 s ahead: the quiet job's news is older than stall_after, the lively one's is not
    later = utcnow() + timedelta(seconds=61)
    stalled = watchdog.run_once(now=later)
    assert quiet["id"] in stalled and lively["id"] not in stalled and other_source["id"] not in stalled
    j = job(client, quiet["id"])
    assert (j["state"], j["attempt"], j["error"]["code"], j["error"]["retryable"]) == ("failed", 1, "stalled", True)
    assert quiet["id"] not in watchdog.run_once(now=later + timedelta(seconds=1))  # already failed: not again
    assert gw_of(slow_app).metrics.registry.get_sample_value("gateway_jobs_stalled_total", {"source": "slow"}) == 1
    assert job(client, lively["id"])["state"] == "processing"

    trace = client.get(f"/api/jobs/{quiet['id']}/trace", headers=AUTH).get_json()
    (entry,) = [e for e in trace["timeline"] if e["what"] == "stalled"]
    assert entry["stall_after"] == 60 and entry["was"] == "processing"

    # the provider was only slow: its newer news resumes attempt 1
    r = post_standard(client, "slow", STANDARD_SECRET, quiet["external_id"], "complete", occurred_at=iso_now(62_000), result={"rows": 9})
    assert r.get_json() == {"status": "accepted"}
    j = job(client, quiet["id"])
    assert (j["state"], j["attempt"], j["result"], j["error"]) == ("complete", 1, {"rows": 9}, None)


def test_registered_job_without_news_stalls_and_a_retried_one_can_stall_again(slow_app):
    client = slow_app.test_client()
    watchdog = gw_of(slow_app).watchdog
    j = register(client, "slow")["job"]
    assert j["id"] not in watchdog.run_once()  # just registered
    later = utcnow() + timedelta(seconds=61)
    assert j["id"] in watchdog.run_once(now=later)
    assert job(client, j["id"])["error"]["code"] == "stalled"
    r = client.post(f"/api/jobs/{j['id']}/retry", headers=AUTH)
    assert r.status_code == 202 and r.get_json()["attempt"] == 2
    # the retry (at failure + 1 ms) is news; a second quiet period stalls attempt 2 (a new event, not a duplicate)
    assert j["id"] not in watchdog.run_once(now=later + timedelta(seconds=59))
    assert j["id"] in watchdog.run_once(now=later + timedelta(seconds=62))
    after = job(client, j["id"])
    assert (after["state"], after["attempt"], after["error"]["code"]) == ("failed", 2, "stalled")


def test_stall_after_must_be_positive(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError
    from tests.conftest import TEST_ENV

    path = config_file(tmp_path, SLOW_SOURCE.replace("stall_after = 60", "stall_after = 0"))
    with pytest.raises(ConfigError, match="sources.slow.stall_after"):
        load_config({**TEST_ENV, "GATEWAY_CONFIG": str(path)})


# -- live: gunicorn's own background watchdog with a short stall_after --------------------------------


def test_live_server_stalls_a_silent_job(db_url, tmp_path):
    cfg = config_file(tmp_path, SLOW_SOURCE.replace("stall_after = 60", "stall_after = 1"), "watchdog_interval = 1")
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(db_url, cfg), log_path=ARTIFACTS / "gunicorn-watchdog.log").start()
    try:
        reg = register(srv.url, "slow")
        r = post_standard(srv.url, "slow", STANDARD_SECRET, reg["job"]["external_id"], "processing", progress={"current": 1, "total": 2})
        assert r.status_code == 200
        deadline = time.monotonic() + 20
        seen = None
        while time.monotonic() < deadline:
            seen = requests.get(f"{srv.url}/api/jobs/{reg['job']['id']}", headers={"Authorization": f"Bearer {reg['token']}"}, timeout=5).json()
            if seen["state"] != "processing":
                break
            time.sleep(0.2)
        assert seen is not None and seen["state"] == "failed", seen
        assert seen["error"] == {"code": "stalled", "message": "No news from the job for 1 s; it is presumed stalled.", "retryable": True}
    finally:
        srv.stop()
