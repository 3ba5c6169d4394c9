"""Forwarding end to end (CONTRACT §9) through real gunicorn (2 gevent workers) on SQLite and
PostgreSQL, with real receivers verifying every message with the ``standardwebhooks`` library:
commits in another process wake the senders at once (the outbox interval is an hour here), a
job's messages arrive in strictly increasing versions whatever order its events came in, nothing
is lost when workers are SIGKILLed mid-send and the receiver refuses connections for a while,
and slow or dead endpoints never hold back a healthy one. Every wait is on the receiver's
condition, never a sleep."""

from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from gateway.models import OutboxItem
from gateway.owed import FORWARD
from tests.conftest import ARTIFACTS, register, server_env
from tests.gwapp import config_file, gw_of, make_app, post_standard
from tests.receiver import Received, Receiver
from tests.servers import Server, free_port
from tests.signing import STANDARD_SECRET, iso_now

SECRET = "whsec_" + "ZTJlLWZvcndhcmQtc2VjcmV0LWZvci10ZXN0cy0wMDAx"
QUIET = "outbox_interval = 3600"  # no sweep in a test's lifetime: only a wake-up sends


def endpoints(**urls: str) -> str:
    return "".join(f'\n[endpoints.{name}]\nurl = "{url}"\nsecret_env = "EP_SECRET"\n' for name, url in urls.items())


@pytest.fixture
def start_server(db_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(extra_sources: str, extra_gateway: str = QUIET) -> Server:
        cfg = config_file(tmp_path, extra_sources, extra_gateway)
        ARTIFACTS.mkdir(exist_ok=True)
        log = ARTIFACTS / f"gunicorn-forward-{uuid.uuid4().hex[:6]}.log"
        srv = Server(server_env(db_url, cfg, EP_SECRET=SECRET), log_path=log).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def verified(requests_: list[Received]) -> dict[str, list[dict[str, Any]]]:
    """Each job's messages answered 2xx, verified, in arrival order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in requests_:
        if r.status == 200:
            message = Webhook(SECRET).verify(r.body, r.headers)
            out[message["data"]["id"]].append(message | {"webhook_id": r.headers["webhook-id"]})
    return out


def completed(job_ids: list[str]) -> Any:
    """The receiver holds a job.complete for every one of ``job_ids``."""
    def done(got: list[Received]) -> bool:
        seen = verified(got)
        return all(any(m["type"] == "job.complete" for m in seen.get(j, [])) for j in job_ids)
    return done


def shuffled_events(base: str, jobs: int, rng: random.Random) -> tuple[list[str], list[tuple[str, str, dict[str, Any]]]]:
    """Per job: three progress steps and the completion, each with its own time, in a shuffled
    order with duplicates (a provider's retries)."""
    exts, events = [], []
    for i in range(jobs):
        ext = f"{base}-{i}"
        exts.append(ext)
        steps = [("processing", {"occurred_at": iso_now(10 * k), "progress": {"current": k, "total": 3}}) for k in (1, 2, 3)]
        steps.append(("complete", {"occurred_at": iso_now(40)}))
        events += [(ext, state, fields) for state, fields in steps]
    events += rng.sample(events, len(events) // 2)
    rng.shuffle(events)
    return exts, events


def assert_in_order(seen: dict[str, list[dict[str, Any]]], job_ids: list[str]) -> None:
    for job_id in job_ids:
        versions = [m["data"]["version"] for m in seen[job_id]]
        assert versions == sorted(set(versions)), (job_id, versions)  # strictly increasing: no repeat, no step back
        assert seen[job_id][-1]["type"] == "job.complete"
        assert all(m["webhook_id"] == f"msg_{job_id}_v{m['data']['version']}" for m in seen[job_id])


def test_shuffled_duplicated_events_reach_the_backend_in_order_woken_across_processes(db_url, tmp_path, start_server) -> None:
    receiver = Receiver().start()
    try:
        urls = {"backend": receiver.url + "/hooks"}
        srv = start_server(endpoints(**urls))
        rng = random.Random(15)
        base = "e2e-" + uuid.uuid4().hex[:8]
        exts, events = shuffled_events(base, 6, rng)
        job_ids = [register(srv.url, "worker", ext)["job"]["id"] for ext in exts]
        for ext, state, fields in events:
            assert post_standard(srv.url, "worker", STANDARD_SECRET, ext, state, **fields).status_code == 200
        seen = verified(receiver.wait_until(completed(job_ids), timeout=30))
        assert_in_order(seen, job_ids)

        # a change committed by a process with no running senders (here, this test's own app) is
        # sent by the server's: the bus told its workers, since no sweep runs for an hour
        app = make_app(db_url, tmp_path, endpoints(**urls), QUIET, EP_SECRET=SECRET)
        ext = base + "-elsewhere"
        job = register(app.test_client(), "worker", ext)["job"]
        assert post_standard(app.test_client(), "worker", STANDARD_SECRET, ext, "complete").status_code == 200
        seen = verified(receiver.wait_until(completed([job["id"]]), timeout=30))
        assert [m["type"] for m in seen[job["id"]]] == ["job.queued", "job.complete"]
    finally:
        receiver.stop()


def test_killed_workers_and_a_refusing_receiver_lose_nothing(db_url, tmp_path, start_server) -> None:
    gate = threading.Event()
    first = threading.Event()

    def respond(n: int, req: Received) -> tuple[int, bytes]:
        if n <= 3:  # the first messages hang until the workers sending them are dead
            first.set()
            gate.wait(30)
        return 200, b""

    receiver = Receiver(respond=respond, port=free_port()).start()
    name = "crash"
    try:
        srv = start_server(endpoints(**{name: receiver.url + "/hooks"}),
                           "outbox_interval = 1\noutbox_timeout = 2\noutbox_backoff = 1\noutbox_backoff_max = 2")
        base = "kill-" + uuid.uuid4().hex[:8]
        exts, events = shuffled_events(base, 4, random.Random(9))
        job_ids = [register(srv.url, "worker", ext)["job"]["id"] for ext in exts]
        assert first.wait(30)  # a message is in flight
        for pid in srv.worker_pids():
            os.kill(pid, signal.SIGKILL)  # mid-send: the gateway never hears the answer
        receiver.stop()  # connections refused from now on
        gate.set()
        for ext, state, fields in events:  # the new workers take these while the receiver is away
            r = _post_retrying(srv.url, ext, state, fields)
            assert r.status_code == 200, r.text
        receiver.start()  # back, on the same port
        seen = verified(receiver.wait_until(completed(job_ids), timeout=60))
        assert_in_order_allowing_duplicates(seen, job_ids)
        app = make_app(db_url, tmp_path, endpoints(**{name: receiver.url + "/hooks"}), EP_SECRET=SECRET)
        with gw_of(app).store.reading() as session:
            rows = session.scalars(select(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.target == name,
                                                             OutboxItem.job_id.in_(job_ids))).all()
        owed = {r.payload["webhook_id"] for r in rows if r.status != "coalesced"}
        arrived = {m["webhook_id"] for msgs in seen.values() for m in msgs}
        assert owed <= arrived  # none lost
        # the last 2xx is recorded just after it was answered: ask until it is (what an operator would see)
        deadline = threading.Event()
        threading.Timer(30, deadline.set).start()
        while not all(r.status in ("delivered", "coalesced") for r in _rows(app, name, job_ids)):
            assert not deadline.wait(0.05), [(r.payload["webhook_id"], r.status) for r in _rows(app, name, job_ids)]
    finally:
        gate.set()
        receiver.stop()


def _rows(app: Any, name: str, job_ids: list[str]) -> list[OutboxItem]:
    with gw_of(app).store.reading() as session:
        return list(session.scalars(select(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.target == name,
                                                             OutboxItem.job_id.in_(job_ids))))


def _post_retrying(base: str, ext: str, state: str, fields: dict[str, Any]) -> requests.Response:
    """A provider retries while gunicorn replaces the killed workers (a refused or reset
    connection, or no answer while a new worker boots); the gateway drops the repeat as a duplicate."""
    for _ in range(50):
        try:
            return post_standard(base, "worker", STANDARD_SECRET, ext, state, **fields)
        except requests.RequestException:
            threading.Event().wait(0.1)  # the provider's own retry pause, not a synchronisation
    raise AssertionError("the gateway did not come back")


def assert_in_order_allowing_duplicates(seen: dict[str, list[dict[str, Any]]], job_ids: list[str]) -> None:
    """At least once: a message may arrive again (always with its own webhook-id), but a job's
    first arrivals are in strictly increasing versions."""
    for job_id in job_ids:
        firsts, ids = [], set()
        for m in seen[job_id]:
            assert m["webhook_id"] == f"msg_{job_id}_v{m['data']['version']}"
            if m["webhook_id"] not in ids:
                ids.add(m["webhook_id"])
                firsts.append(m["data"]["version"])
        assert firsts == sorted(firsts), (job_id, firsts)


def test_slow_and_dead_endpoints_never_delay_a_healthy_one(db_url, tmp_path, start_server) -> None:
    gate = threading.Event()
    healthy = Receiver().start()
    slow = Receiver(respond=lambda n, req: (gate.wait(60), (200, b""))[1]).start()
    failing = Receiver(respond=lambda n, req: (500, b"broken")).start()
    try:
        srv = start_server(endpoints(healthy=healthy.url + "/h", slow=slow.url + "/h", failing=failing.url + "/h",
                                     refused=f"http://127.0.0.1:{free_port()}/h"),
                           QUIET + "\noutbox_backoff = 1\noutbox_backoff_max = 2")
        base = "iso-" + uuid.uuid4().hex[:8]
        exts, events = shuffled_events(base, 5, random.Random(3))
        job_ids = [register(srv.url, "worker", ext)["job"]["id"] for ext in exts]
        for ext, state, fields in events:
            assert post_standard(srv.url, "worker", STANDARD_SECRET, ext, state, **fields).status_code == 200
        seen = verified(healthy.wait_until(completed(job_ids), timeout=30))
        assert_in_order(seen, job_ids)
        assert slow.requests == []  # every healthy message arrived while the slow endpoint had answered none
        assert failing.requests and all(r.status == 500 for r in failing.requests)
    finally:
        gate.set()
        for r in (healthy, slow, failing):
            r.stop()
