"""The `gateway` command line as operators run it (subprocesses), and the pruning rule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.auth import Auth
from gateway.ids import utcnow
from gateway.models import Delivery, Event, Job, TraceEntry
from gateway.store import event_of
from tests.conftest import API_KEY, SECRET_KEY, TEST_ENV, register, write_config
from tests.signing import STANDARD_SECRET, standard_body, standard_headers
from tests.test_trace import deliver, story

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def cli(db_url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path / "cli.toml")
    full = {**os.environ, **TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, env=full, timeout=60)


def test_find_by_whatever_the_ticket_has(client: Any, db_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    ext = f"order-{tag}"
    job_id = register(client, external_id=ext, label=f"Export for ACME {tag}")["job"]["id"]
    event_id, _ = deliver(client, ext, "processing")
    other = register(client, external_id=f"unrelated-{uuid.uuid4().hex[:8]}")["job"]["id"]
    for text, why in ((job_id[:-4], "id prefix"), (ext, "external id"), (f"acme {tag}", "label"), (event_id, "event id"), (tag, "part of external id")):
        out = cli(db_url, tmp_path, "find", "--json", text)
        assert out.returncode == 0, out.stderr
        hits = json.loads(out.stdout)
        assert job_id in [h["id"] for h in hits], (text, hits)
        assert other not in [h["id"] for h in hits]
        assert next(h for h in hits if h["id"] == job_id)["matched"] == why
    out = cli(db_url, tmp_path, "find", ext)
    assert out.returncode == 0 and job_id in out.stdout and "processing" in out.stdout
    out = cli(db_url, tmp_path, "find", "no-such-thing-" + uuid.uuid4().hex)
    assert out.returncode == 1 and "no job matches" in out.stderr
    out = cli(db_url, tmp_path, "find", "--json", "%")  # LIKE wildcards are text, not patterns
    assert job_id not in out.stdout


def test_rejected_deliveries_answer_why_a_webhook_did_not_arrive(client: Any, db_url: str, tmp_path: Path) -> None:
    ext = "rej-" + uuid.uuid4().hex[:8]
    body = standard_body(ext, "processing")
    bad = standard_headers("whsec_" + "QUJD" * 8, body)
    assert client.post("/webhooks/worker", data=body, headers=bad, environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 401
    assert client.post(f"/webhooks/nosuch-{ext}", data=b"{}").status_code == 404
    big = b"x" * (1024 * 1024 + 10)
    assert client.post("/webhooks/worker", data=big, headers={"content-type": "application/json"}).status_code == 413
    out = cli(db_url, tmp_path, "deliveries", "--rejected", "--json", "--limit", "500")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    sig = next(r for r in rows if r["remote_addr"] == "203.0.113.7")
    assert sig["status"] == 401 and sig["source"] == "worker" and sig["size"] == len(body) and "signature" in sig["reason"]
    assert not any(ext in r["source"] for r in rows)  # posts to unknown sources are counted, never stored
    assert any(r["status"] == 413 and r["size"] == len(big) for r in rows)
    assert all(r["status"] >= 400 for r in rows)
    assert sig["external_id"] == ext and sig["verified"] is False  # claimed by the body, which is never kept
    text = cli(db_url, tmp_path, "deliveries", "--rejected", "--source", "worker", "--since", "1h").stdout
    assert "203.0.113.7" in text and "REASON" in text
    # and accepted ones list with their decision
    deliver(client, ext, "processing")
    text = cli(db_url, tmp_path, "deliveries", "--source", "worker", "--limit", "5").stdout
    assert "applied" in text.splitlines()[1] or "held" in text.splitlines()[1]
    assert cli(db_url, tmp_path, "deliveries", "--since", "yesterday").returncode == 2


def test_sources_show_whether_secrets_are_set_never_the_secrets(db_url: str, tmp_path: Path) -> None:
    out = cli(db_url, tmp_path, "sources", env={"STRIPE_SECRETS": ""})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "2 set" in lines["worker"] and "NOT SET" in lines["stripe"]
    assert STANDARD_SECRET not in out.stdout and STANDARD_SECRET[6:20] not in out.stdout
    data = json.loads(cli(db_url, tmp_path, "sources", "--json").stdout)
    assert {s["name"]: s["secrets_set"] for s in data}["stripe"] == 2


def test_token_adapters_and_migrate(client: Any, db_url: str, tmp_path: Path) -> None:
    job_id = "job_cli_" + uuid.uuid4().hex[:10]
    out = cli(db_url, tmp_path, "token", job_id, "--scope", "read")
    assert out.returncode == 0, out.stderr
    who = Auth(SECRET_KEY, [API_KEY], 3600).principal(out.stdout.strip())
    assert who.job_id == job_id and who.scopes == ("read",)
    assert cli(db_url, tmp_path, "token", "not-a-job-id").returncode == 1
    out = cli(db_url, tmp_path, "adapters")
    assert "standard" in out.stdout and "stripe" in out.stdout
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = cli(fresh, tmp_path, "migrate")
    assert out.returncode == 0 and re.search(r"applied \d+ migration\(s\)", out.stderr) and "0001 " in out.stderr
    out = cli(fresh, tmp_path, "migrate")
    assert out.returncode == 0 and "already up to date" in out.stderr


# -- pruning -------------------------------------------------------------------------------------


def test_prune_keeps_every_jobs_state_and_what_its_fold_needs(app: Any, client: Any, db_url: str, tmp_path: Path) -> None:
    from gateway import states
    from gateway.support import prune

    gw = app.extensions["gateway"]
    done = story(client)  # complete after a duplicate, a stale event, a failure and a retry
    progress_ext = "prog-" + uuid.uuid4().hex[:6]
    progress_job = register(client, external_id=progress_ext)["job"]["id"]
    for i in range(5):
        deliver(client, progress_ext, "processing", offset_ms=-1000 + i * 10, progress={"current": i, "total": 10})
    deliver(client, progress_ext, "complete")
    running = register(client, external_id="run-" + uuid.uuid4().hex[:6])["job"]["id"]
    deliver(client, client.get(f"/api/jobs/{running}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["external_id"], "processing")
    orphan_ext = "orphan-" + uuid.uuid4().hex[:6]
    orphan_event, _ = deliver(client, orphan_ext, "processing")  # held forever: never registered
    before = {j: client.get(f"/api/jobs/{j}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
              for j in (done["job_id"], progress_job, running)}
    later = utcnow() + timedelta(days=40)  # as if prune ran 40 days from now

    dry = prune(gw.store, 30, now=later, dry_run=True)
    assert dry.deliveries > 0 and dry.held_events >= 1 and dry.jobs_thinned >= 2
    with gw.store.reading() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) >= dry.deliveries  # a dry run deletes nothing

    report = prune(gw.store, 30, now=later)
    assert report.job_events >= 4  # progress updates, the duplicate-free stale event…
    with gw.store.reading() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(func.count()).select_from(Event).where(Event.event_id == orphan_event)) == 0
        whats = set(s.scalars(select(TraceEntry.what).where(TraceEntry.job_id == done["job_id"])))
        assert whats == {"registered", "pruned"}
        # the running job keeps every event; complete jobs keep what reproduces them
        assert s.scalar(select(func.count()).select_from(Event).where(Event.job_id == running)) == 1
        for job_id in (done["job_id"], progress_job):
            job = s.get(Job, job_id)
            rows = s.scalars(select(Event).where(Event.job_id == job_id)).all()
            view, _ = states.fold(job.created_at, [event_of(r) for r in rows], [], job.registered_label)
            assert (view.state.value, view.attempt, view.result, view.state_changed_at) == (job.state, job.attempt, job.result, job.state_changed_at)
        assert len(s.scalars(select(Event).where(Event.job_id == progress_job)).all()) < 6
    again = prune(gw.store, 30, now=later)  # a second run has nothing left to do
    assert (again.deliveries, again.job_events, again.jobs_thinned, again.jobs_kept_whole) == (0, 0, 0, 0)
    after = {j: client.get(f"/api/jobs/{j}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json() for j in before}
    assert after == before  # no job's JSON moved

    # a late event for a pruned complete job refolds from what is left and changes nothing
    _, r = deliver(client, done["external_id"], "processing", offset_ms=-3500, progress={"current": 99, "total": 100})
    assert r["status"] == "accepted"
    late = client.get(f"/api/jobs/{done['job_id']}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    assert {k: v for k, v in late.items() if k != "version"} == {k: v for k, v in before[done["job_id"]].items() if k != "version"}

    # the trace still tells the story it can: registration and the job as it is
    out = cli(db_url, tmp_path, "trace", done["job_id"])
    assert out.returncode == 0 and "registered" in out.stdout and "now: complete" in out.stdout
    pruned = next(line for line in out.stdout.splitlines() if "events_deleted=" in line)
    assert re.search(r"events_deleted=[1-9]", pruned), out.stdout


def test_prune_cli_reports_counts(client: Any, db_url: str, tmp_path: Path) -> None:
    out = cli(db_url, tmp_path, "prune", "--dry-run", "--days", "3650", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["dry_run"] is True and data["deliveries"] == 0 and data["job_events"] == 0
    assert cli(db_url, tmp_path, "prune", "--days", "0").returncode == 2
    out = cli(db_url, tmp_path, "prune", "--days", "3650")
    assert out.returncode == 0 and out.stdout.startswith("deleted history older than")


def test_a_database_without_schema_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (("trace", "job_x"), ("find", "x"), ("deliveries", "--rejected"), ("prune", "--dry-run")):
        out = cli(empty, tmp_path, *args)
        assert out.returncode == 1, (args, out.stderr)
        assert "gateway migrate" in out.stderr and "Traceback" not in out.stderr


def test_deliveries_job_and_the_trace_api_take_an_external_id(client: Any, db_url: str, tmp_path: Path) -> None:
    ext = "order-" + uuid.uuid4().hex[:10]
    job_id = register(client, external_id=ext)["job"]["id"]
    event_id, _ = deliver(client, ext, "processing")
    key = {"Authorization": f"Bearer {API_KEY}"}
    for name in (job_id, ext, event_id):
        r = client.get(f"/api/jobs/{name}/trace", headers=key)
        assert r.status_code == 200 and r.get_json()["job"]["id"] == job_id, name
        out = cli(db_url, tmp_path, "deliveries", "--job", name, "--json")
        assert out.returncode == 0, out.stderr
        assert [r["job_id"] for r in json.loads(out.stdout)] == [job_id]
    r = client.get(f"/api/jobs/no-such-{ext}/trace", headers=key)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "job_not_found"
    out = cli(db_url, tmp_path, "deliveries", "--job", f"no-such-{ext}")
    assert out.returncode == 1 and "no job" in out.stderr
