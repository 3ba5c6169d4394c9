"""Sending forwarded messages (CONTRACT §9), driven by hand on one app: 410 Gone disables an
endpoint in every process until an operator enables it, progress coalesces, each try is traced
with its endpoint, status and duration, and the oldest pending message is a metric. SQLite and
PostgreSQL through the db_url fixture; the receivers are real HTTP servers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from gateway.models import OutboxItem
from gateway.owed import FORWARD
from tests.conftest import TEST_ENV, register
from tests.gwapp import api, config_file, gw_of, make_app, post_standard
from tests.receiver import Receiver
from tests.signing import STANDARD_SECRET, iso_now

SECRET = "whsec_" + "Zm9yd2FyZC1zZWNyZXQtZm9yLXRoZS10ZXN0cy0wMDE="
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def endpoint_config(name: str, url: str) -> str:
    return f'\n[endpoints.{name}]\nurl = "{url}"\nsecret_env = "EP_SECRET"\n'


def messages_for(receiver: Receiver, job_id: str) -> list[dict[str, Any]]:
    """The verified messages of one job the receiver answered 2xx, in arrival order."""
    out = []
    for r in receiver.requests:
        if r.status == 200 and job_id in r.body.decode():
            out.append(Webhook(SECRET).verify(r.body, r.headers) | {"webhook_id": r.headers["webhook-id"]})
    return out


def rows_of(app: Any, job_id: str, endpoint: str) -> list[OutboxItem]:
    with gw_of(app).store.reading() as session:
        return list(session.scalars(select(OutboxItem).where(OutboxItem.kind == FORWARD, OutboxItem.job_id == job_id,
                                                             OutboxItem.target == endpoint).order_by(OutboxItem.id)))


def test_410_disables_the_endpoint_everywhere_until_an_operator_enables_it(db_url: str, tmp_path: Path) -> None:
    answers = {"status": 410}
    receiver = Receiver(respond=lambda n, req: (answers["status"], b"")).start()
    name = "gone_" + uuid.uuid4().hex[:8]
    try:
        extra = endpoint_config(name, f"http://user:pw@127.0.0.1:{receiver.port}/hooks")
        app = make_app(db_url, tmp_path, extra, EP_SECRET=SECRET)
        other = make_app(db_url, tmp_path, extra, EP_SECRET=SECRET)  # another process, same database
        client = app.test_client()
        ext = "gone-" + uuid.uuid4().hex[:8]
        job = register(client, "worker", ext)["job"]
        assert post_standard(client, "worker", STANDARD_SECRET, ext, "processing", occurred_at=iso_now(1)).status_code == 200
        assert app.extensions["forward_senders"][name].drain() == 1  # the 410 stops the sender at its first try
        assert len(receiver.requests) == 1
        # every process agrees: the other app's sender does not try either
        assert other.extensions["forward_senders"][name].drain() == 0 and len(receiver.requests) == 1
        listed = {e["name"]: e for e in client.get("/api/endpoints", headers=api()).get_json()["endpoints"]}
        assert listed[name]["enabled"] is False and listed[name]["pending"] == 2 and listed[name]["dead"] == 0
        assert [r.status for r in rows_of(app, job["id"], name)] == ["pending", "pending"]  # not dead
        trace = client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_json()
        tries = [t for t in trace["timeline"] if t["what"] == "forward"]
        assert tries[-1]["outcome"] == "disabled" and tries[-1]["enabled"] is False and tries[-1]["endpoint"] == name
        assert tries[-1]["status"] == 410 and isinstance(tries[-1]["duration_ms"], float)
        assert "pw@" not in json.dumps(trace)

        listing = subprocess.run([GATEWAY, "endpoints"], capture_output=True, text=True, timeout=60,
                                 env={**TEST_ENV, "PATH": "/usr/bin:/bin", "DATABASE_URL": db_url,
                                      "GATEWAY_CONFIG": str(config_file(tmp_path, extra)), "EP_SECRET": SECRET})
        line = next(li for li in listing.stdout.splitlines() if li.startswith(name))
        assert "NO (410 Gone)" in line and "pw@" not in listing.stdout

        answers["status"] = 200
        assert client.post(f"/api/endpoints/{name}/enable").status_code == 401
        assert client.post("/api/endpoints/nope/enable", headers=api()).status_code == 404
        enabled = subprocess.run([GATEWAY, "endpoints", "enable", name], capture_output=True, text=True, timeout=60,
                                 env={**TEST_ENV, "PATH": "/usr/bin:/bin", "DATABASE_URL": db_url,
                                      "GATEWAY_CONFIG": str(config_file(tmp_path, extra)), "EP_SECRET": SECRET})
        assert enabled.returncode == 0, enabled.stderr
        assert "enabled" in enabled.stdout and "2 pending" in enabled.stdout
        other.extensions["forward_senders"][name].drain()
        got = messages_for(receiver, job["id"])
        assert [m["data"]["version"] for m in got] == [1, 2]  # in order once flowing again
        r = client.post(f"/api/endpoints/{name}/enable", headers=api())  # enabling an enabled one is harmless
        assert r.status_code == 200 and r.get_json()["endpoint"]["enabled"] is True and r.get_json()["endpoint"]["pending"] == 0
    finally:
        receiver.stop()


def test_progress_coalesces_but_the_last_before_a_state_change_is_sent(db_url: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    name = "prog_" + uuid.uuid4().hex[:8]
    try:
        app = make_app(db_url, tmp_path, endpoint_config(name, receiver.url + "/h"), EP_SECRET=SECRET)
        client = app.test_client()
        ext = "prog-" + uuid.uuid4().hex[:8]
        job = register(client, "worker", ext)["job"]
        at = 0
        for step in range(1, 6):  # a storm of progress no sender has picked up yet
            at += 1
            assert post_standard(client, "worker", STANDARD_SECRET, ext, "processing", occurred_at=iso_now(at),
                                 progress={"current": step, "total": 9}).status_code == 200
        assert post_standard(client, "worker", STANDARD_SECRET, ext, "complete", occurred_at=iso_now(at + 1)).status_code == 200
        statuses = [(r.payload["type"], r.status) for r in rows_of(app, job["id"], name)]
        # v1 queued, v2 processing (1/9), v3..v6 progress, v7 complete: the middle progress is replaced
        assert statuses == [("job.queued", "pending"), ("job.processing", "pending"), ("job.progress", "coalesced"),
                            ("job.progress", "coalesced"), ("job.progress", "coalesced"), ("job.progress", "pending"),
                            ("job.complete", "pending")]
        sender = app.extensions["forward_senders"][name]
        while sender.drain():
            pass
        got = messages_for(receiver, job["id"])
        assert [(m["type"], m["data"]["version"]) for m in got] == [
            ("job.queued", 1), ("job.processing", 2), ("job.progress", 6), ("job.complete", 7)]
        assert got[2]["data"]["progress"]["current"] == 5  # the last progress before the state change
        assert all(m["webhook_id"] == f"msg_{job['id']}_v{m['data']['version']}" for m in got)
    finally:
        receiver.stop()


def test_oldest_pending_message_is_a_metric_and_retries_are_traced(db_url: str, tmp_path: Path) -> None:
    receiver = Receiver(respond=lambda n, req: (503, b"busy", {"Retry-After": "1"})).start()
    name = "slowq_" + uuid.uuid4().hex[:8]
    try:
        app = make_app(db_url, tmp_path, endpoint_config(name, receiver.url + "/h"), "metrics_cache_seconds = 0", EP_SECRET=SECRET)
        client = app.test_client()
        job = register(client, "worker", "old-" + uuid.uuid4().hex[:8])["job"]
        app.extensions["forward_senders"][name].drain()
        (row,) = rows_of(app, job["id"], name)
        assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 503")
        trace = client.get(f"/api/jobs/{job['id']}/trace", headers=api()).get_json()
        (tried,) = [t for t in trace["timeline"] if t["what"] == "forward"]
        assert tried["endpoint"] == name and tried["status"] == 503 and tried["outcome"] == "retry"
        assert tried["duration_ms"] >= 0 and tried["next_try_at"]
        text = client.get("/metrics").get_data(as_text=True)
        line = next(li for li in text.splitlines() if li.startswith(f'gateway_forward_oldest_pending_seconds{{endpoint="{name}"}}'))
        assert float(line.split()[-1]) >= 0
        assert f'gateway_forward_total{{endpoint="{name}",outcome="retry"}} 1.0' in text
    finally:
        receiver.stop()
