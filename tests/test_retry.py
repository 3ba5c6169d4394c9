"""Retry end to end: a failed job, a browser's retry, attempt 2 for every watcher, and the signed
callback that reaches the integrator through the outbox — across a gateway restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.conftest import API_KEY, ARTIFACTS, register, server_env
from tests.gwapp import config_file, post_standard
from tests.receiver import Receiver
from tests.servers import Server
from tests.signing import STANDARD_SECRET

CALLBACK_SECRET = "whsec_" + "Y2FsbGJhY2stc2VjcmV0LWZvci10aGUtdGVzdHMtMDE="
API = {"Authorization": f"Bearer {API_KEY}"}


def until(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll an observable condition until it holds (returns its value) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_server(db_url: str, tmp_path: Path, receiver_url: str, name: str) -> Server:
    extra = f"""
[sources.cb]
adapter = "standard"
secrets_env = "WORKER_SECRETS"
callback_url = "{receiver_url}/hooks/gateway"
callback_secret_env = "CB_SECRET"
"""
    cfg = config_file(tmp_path, extra, "outbox_interval = 1\noutbox_backoff = 2\noutbox_timeout = 2")
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"gunicorn-{name}-{'pg' if 'postgres' in db_url else 'sqlite'}.log"
    return Server(server_env(db_url, cfg, CB_SECRET=CALLBACK_SECRET), log_path=log).start()


def callback_tries(base: str, job_id: str) -> list[dict[str, Any]]:
    timeline = requests.get(f"{base}/api/jobs/{job_id}/trace", headers=API, timeout=10).json()["timeline"]
    return [e for e in timeline if e["what"] == "callback"]


def fail_job(base: str) -> dict[str, Any]:
    reg = register(base, "cb")
    r = post_standard(base, "cb", STANDARD_SECRET, reg["job"]["external_id"], "failed", error={"code": "render_failed", "message": "GPU out of memory"})
    assert r.status_code == 200 and r.json() == {"status": "accepted"}, r.text
    return reg


def browser_token(base: str, job_id: str, scopes: list[str]) -> str:
    r = requests.post(f"{base}/api/tokens", json={"job": job_id, "scopes": scopes}, headers=API, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["token"]


class Watcher:
    """A WebSocket watcher of one job, when the relay (/ws) is in this build."""

    def __init__(self, base: str, job_id: str, token: str):
        import websocket

        self.ws = websocket.create_connection(base.replace("http://", "ws://") + "/ws", timeout=10, suppress_origin=True)
        self.ws.send(json.dumps({"type": "subscribe", "job": job_id, "token": token}))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(deadline - time.monotonic(), 0.1))
            msg = json.loads(self.ws.recv())
            if msg.get("type") == "job" and predicate(msg["job"]):
                return msg["job"]
        raise AssertionError("no matching job frame on the WebSocket")

    def close(self) -> None:
        self.ws.close()


def has_websocket(base: str) -> bool:
    return requests.get(base + "/ws", timeout=5).status_code != 404


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_retry_reaches_watchers_and_the_integrator_across_a_restart(db_url, tmp_path, receiver):
    restarted = threading.Event()
    # the first two tries get 500; after that 500 until the gateway has been restarted, then 200
    receiver.respond = lambda n, req: (200, "ok") if n > 2 and restarted.is_set() else (500, "integrator down")
    srv = start_server(db_url, tmp_path, receiver.url, "retry-a")
    second: Server | None = None
    watcher = None
    try:
        reg = fail_job(srv.url)
        job_id = reg["job"]["id"]
        reader = reg["token"]
        failed = requests.get(f"{srv.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        assert (failed.json()["state"], failed.json()["attempt"], failed.json()["error"]["retryable"]) == ("failed", 1, True)
        if has_websocket(srv.url):
            watcher = Watcher(srv.url, job_id, reader)
            watcher.wait_for(lambda j: j["state"] == "failed")

        # a read-only token may watch but not retry
        read_only = browser_token(srv.url, job_id, ["read"])
        denied = requests.post(f"{srv.url}/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {read_only}"}, timeout=10)
        assert denied.status_code == 403
        token = browser_token(srv.url, job_id, ["read", "retry"])
        r = requests.post(f"{srv.url}/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 202, r.text
        assert (r.json()["state"], r.json()["attempt"], r.json()["error"]) == ("queued", 2, None)

        # every watcher sees attempt 2 queued
        if watcher is not None:
            pushed = watcher.wait_for(lambda j: j["attempt"] == 2)
            assert pushed["state"] == "queued" and pushed["version"] == r.json()["version"]
        polled = requests.get(f"{srv.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                              params={"wait": "5"}, timeout=15).json()
        assert (polled["state"], polled["attempt"]) == ("queued", 2)

        # two failed tries recorded by the first gateway, then it goes away
        until(lambda: len(callback_tries(srv.url, job_id)) >= 2, 30, "two callback tries in the trace")
        srv.stop()
        before = list(receiver.requests)
        assert len(before) >= 2 and {q.status for q in before} == {500}
        restarted.set()

        # a new gateway on the same database finds the owed callback and delivers it
        second = start_server(db_url, tmp_path, receiver.url, "retry-b")
        until(lambda: any(q.status == 200 for q in receiver.requests), 60, "the acknowledged callback")
        tries = until(lambda: [t for t in callback_tries(second.url, job_id) if t["outcome"] == "delivered"] and callback_tries(second.url, job_id),
                      30, "the delivered try in the trace")
        got = list(receiver.requests)
        assert [q.status for q in got].count(200) == 1
        assert got[-1].status == 200 and len(got) > len(before)
        assert len({q.headers["webhook-id"] for q in got}) == 1  # the same message on every try
        for q in got:
            payload = Webhook(CALLBACK_SECRET).verify(q.body, q.headers)  # the receiver's own verification
            assert payload["type"] == "job.retry_requested"
            assert (payload["data"]["id"], payload["data"]["state"], payload["data"]["attempt"]) == (job_id, "queued", 2)
        assert [t["status"] for t in tries] == [q.status for q in got]
        assert [t["outcome"] for t in tries] == ["retry"] * (len(got) - 1) + ["delivered"]
        # the job itself did not move: the integrator re-runs the work and reports it
        assert requests.get(f"{second.url}/api/jobs/{job_id}", headers=API, timeout=10).json()["attempt"] == 2
    finally:
        if watcher is not None:
            watcher.close()
        srv.stop()
        if second is not None:
            second.stop()


def test_twenty_simultaneous_retries_make_one_attempt_and_one_callback(db_url, tmp_path, receiver):
    srv = start_server(db_url, tmp_path, receiver.url, "retry-race")
    try:
        reg = fail_job(srv.url)
        job_id = reg["job"]["id"]
        token = browser_token(srv.url, job_id, ["read", "retry"])
        barrier = threading.Barrier(20)
        answers: list[requests.Response] = []
        lock = threading.Lock()

        def click() -> None:
            barrier.wait()
            r = requests.post(f"{srv.url}/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            with lock:
                answers.append(r)

        threads = [threading.Thread(target=click) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [202] + [409] * 19, statuses
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"not_failed"}
        job = requests.get(f"{srv.url}/api/jobs/{job_id}", headers=API, timeout=10).json()
        assert (job["state"], job["attempt"]) == ("queued", 2)
        trace = requests.get(f"{srv.url}/api/jobs/{job_id}/trace", headers=API, timeout=10).json()
        assert [e["what"] for e in trace["timeline"]].count("retry") == 1
        assert [e["what"] for e in trace["timeline"]].count("callback_queued") == 1
        until(lambda: any(t["outcome"] == "delivered" for t in callback_tries(srv.url, job_id)), 30, "the callback")
        assert [q.headers["webhook-id"] for q in receiver.requests] == [f"msg_retry_{job_id}_2"]
    finally:
        srv.stop()


def test_retry_of_a_job_that_is_not_failed_or_not_retryable_is_409(server):
    reg = register(server.url, "worker")
    job_id = reg["job"]["id"]
    r = requests.post(f"{server.url}/api/jobs/{job_id}/retry", headers=API, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_failed")
    post_standard(server.url, "worker", STANDARD_SECRET, reg["job"]["external_id"], "failed", error={"code": "card_declined", "retryable": False})
    r = requests.post(f"{server.url}/api/jobs/{job_id}/retry", headers=API, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_retryable")
    r = requests.post(f"{server.url}/api/jobs/job_nope/retry", headers=API, timeout=10)
    assert r.status_code == 404
