"""The support trace: from a job id to the whole story, as the CLI prints it and the API returns it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import API_KEY, ARTIFACTS, TEST_ENV, register, write_config
from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers

ROOT = Path(__file__).resolve().parent.parent


def deliver(client: Any, external_id: str, state: str, *, msg_id: str | None = None, offset_ms: int = 0, **fields: Any) -> tuple[str, Any]:
    """POST one signed standard webhook to the `worker` source; returns (event id, response)."""
    msg_id = msg_id or "msg_" + uuid.uuid4().hex[:16]
    body = standard_body(external_id, state, iso_now(offset_ms), **fields)
    r = client.post("/webhooks/worker", data=body, headers=standard_headers(STANDARD_SECRET, body, msg_id))
    assert r.status_code == 200, r.get_data(as_text=True)
    return msg_id, r.get_json()


def story(client: Any) -> dict[str, Any]:
    """A job that went through: an event before registration, a duplicate, a stale event, a
    failure, a retry and a second attempt that completes."""
    ext = "import-" + uuid.uuid4().hex[:8]
    held, r = deliver(client, ext, "queued", offset_ms=-5000, queue={"name": "imports", "position": 3, "total": 3})
    assert r["status"] == "accepted"
    reg = register(client, external_id=ext, label="Import customers.csv", queue="imports")
    job_id = reg["job"]["id"]
    first, _ = deliver(client, ext, "processing", offset_ms=-4000, progress={"current": 10, "total": 100})
    _, r = deliver(client, ext, "processing", msg_id=first, offset_ms=-4000, progress={"current": 10, "total": 100})
    assert r["status"] == "duplicate"
    stale, _ = deliver(client, ext, "queued", offset_ms=-4500)
    failed, _ = deliver(client, ext, "failed", offset_ms=-3000, error={"code": "bad_row", "message": "Row 41: missing email"})
    r = client.post(f"/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 202, r.get_data(as_text=True)
    again, _ = deliver(client, ext, "processing", offset_ms=1000, progress={"current": 50, "total": 100})
    done, _ = deliver(client, ext, "complete", offset_ms=2000, result={"url": "https://example.com/r/1"})
    return {"job_id": job_id, "external_id": ext, "held": held, "first": first, "stale": stale, "failed": failed, "again": again, "done": done}


def run_cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway …`` as a subprocess, as a person on support runs it."""
    cfg = write_config(tmp_path / "cli.toml")
    env = {**os.environ, **TEST_ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    exe = Path(sys.executable).with_name("gateway")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_trace_tells_the_story_in_order(client: Any, db_url: str, tmp_path: Path) -> None:
    s = story(client)
    out = run_cli(db_url, tmp_path, "trace", s["job_id"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"trace-{'pg' if 'postgres' in db_url else 'sqlite'}.txt").write_text(text)
    lines = text.splitlines()
    assert lines[0].startswith(s["job_id"]) and "Import customers.csv" in lines[0]
    assert "now: complete   attempt 2" in lines[1]

    def at(needle: str, *also: str) -> int:
        hits = [i for i, line in enumerate(lines) if needle in line and all(a in line for a in also)]
        assert hits, f"{needle} {also} not in:\n{text}"
        return hits[0]

    order = [
        at(s["held"], "held"),
        at("registered", s["external_id"]),
        at(s["first"], "applied", "queued → processing"),
        at(s["first"], "duplicate"),
        at(s["stale"], "stale", "processing → processing"),
        at(s["failed"], "applied", "processing → failed"),
        at("retry", "failed → queued", "attempt 2"),
        at(s["again"], "applied", "queued → processing"),
        at(s["done"], "applied", "processing → complete"),
    ]
    assert order == sorted(order), text
    assert len(lines) < 50  # one screen
    assert "sig" in lines[lines.index(next(l for l in lines if l.startswith("TIME")))].lower()


def test_cli_trace_json_is_the_same_story(client: Any, db_url: str, tmp_path: Path) -> None:
    s = story(client)
    out = run_cli(db_url, tmp_path, "trace", "--json", s["job_id"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["job"]["id"] == s["job_id"] and data["job"]["state"] == "complete" and data["job"]["attempt"] == 2
    deliveries = [(e["event_id"], e["decision"]) for e in data["timeline"] if e["what"] == "delivery"]
    assert deliveries == [
        (s["held"], "held"), (s["first"], "applied"), (s["first"], "duplicate"), (s["stale"], "stale"),
        (s["failed"], "applied"), (s["again"], "applied"), (s["done"], "applied"),
    ]
    times = [e["at"] for e in data["timeline"]]
    assert times == sorted(times)
    versions = [e["version"] for e in data["timeline"] if e["what"] == "delivery" and e["decision"] == "applied"]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert [e["what"] for e in data["timeline"]].count("retry") == 1
    by_what = {e["what"]: e for e in data["timeline"] if e["what"] != "delivery"}
    assert by_what["registered"]["version"] == 1 and by_what["registered"]["adopted"] == 1
    failed = next(e for e in data["timeline"] if e.get("event_id") == s["failed"])
    assert by_what["retry"]["version"] == failed["version"] + 1  # every change has its version
    # the API returns the same data
    r = client.get(f"/api/jobs/{s['job_id']}/trace", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
    assert r.get_json()["timeline"] == data["timeline"]


def test_trace_endpoint_needs_an_api_key(client: Any) -> None:
    job = register(client)
    tok = job["token"]
    assert client.get(f"/api/jobs/{job['job']['id']}/trace").status_code == 401
    assert client.get(f"/api/jobs/{job['job']['id']}/trace", headers={"Authorization": f"Bearer {tok}"}).status_code == 403


def test_unknown_job_suggests_closest_matches(client: Any, db_url: str, tmp_path: Path) -> None:
    ext = "invoice-" + uuid.uuid4().hex[:10]
    job_id = register(client, external_id=ext, label="Monthly invoice run")["job"]["id"]
    # the ticket has the external id, not the job id: it names one job, whose trace follows
    out = run_cli(db_url, tmp_path, "trace", ext)
    assert out.returncode == 0, out.stderr
    assert f"({ext} is the external id of {job_id})" in out.stderr and out.stdout.startswith(job_id)
    # a piece of it is not enough to pick one: suggestions
    out = run_cli(db_url, tmp_path, "trace", ext[:-2])
    assert out.returncode == 1
    assert f"no job {ext[:-2]}" in out.stderr and job_id in out.stderr and "part of external id" in out.stderr
    # a mistyped job id (one character changed)
    typo = job_id[:-1] + ("A" if job_id[-1] != "A" else "B")
    out = run_cli(db_url, tmp_path, "trace", typo)
    assert out.returncode == 1 and job_id in out.stderr, out.stderr
    # the API says the same, as data
    r = client.get(f"/api/jobs/{typo}/trace", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404
    body = r.get_json()
    assert body["error"]["code"] == "job_not_found"
    assert job_id in [h["id"] for h in body["suggestions"]]
    r = client.get("/api/jobs/" + "x" * 5000 + "/trace", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and r.get_json()["suggestions"] == []
    # nothing similar at all
    out = run_cli(db_url, tmp_path, "trace", "job_" + uuid.uuid4().hex)
    assert out.returncode == 1 and "gateway find" in out.stderr


def test_worker_events_and_outbound_calls_are_on_the_timeline(client: Any, app: Any) -> None:
    from gateway.trace import build_trace, render_trace

    job_id = register(client, source="api", external_id="own-" + uuid.uuid4().hex[:8])["job"]["id"]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = client.post(f"/api/jobs/{job_id}/events", json={"state": "failed", "occurred_at": iso_now(), "event_id": "w1",
                                                       "error": {"code": "oom", "message": "out of memory"}}, headers=auth)
    assert r.status_code == 200
    gw = app.extensions["gateway"]
    with gw.store.transaction() as w:  # what the retry outbox writes for its outbound calls
        w.trace(job_id, "callback", {"attempt": 1, "try": 1, "status": 503, "outcome": "retry", "url": "https://app.example.com/hooks",
                                     "next_try_at": data_day(gw, job_id) + "T12:00:05.000Z"})
    data = build_trace(gw.store, job_id)
    assert data is not None
    whats = [e["what"] for e in data["timeline"]]
    assert whats == ["registered", "worker_event", "callback"]
    worker = data["timeline"][1]
    assert (worker["decision"], worker["state_before"], worker["state_after"], worker["version"]) == ("applied", "queued", "failed", 2)
    text = render_trace(data)
    assert "error: oom: out of memory" in text
    callback = next(line for line in text.splitlines() if "callback" in line)
    assert "attempt 1" in callback and "try 1" in callback and "status 503" in callback and "retry" in callback
    assert "next_try_at=12:00:05.000" in text


def test_long_progress_runs_fold_into_one_line(client: Any, app: Any) -> None:
    from gateway.trace import build_trace, render_trace

    ext = "big-" + uuid.uuid4().hex[:8]
    job_id = register(client, external_id=ext)["job"]["id"]
    for i in range(30):
        deliver(client, ext, "processing", offset_ms=-60000 + i * 100, progress={"current": i, "total": 30})
    deliver(client, ext, "complete", offset_ms=0)
    data = build_trace(app.extensions["gateway"].store, job_id)
    assert data is not None
    short, full = render_trace(data), render_trace(data, show_all=True)
    assert "… 27 more progress updates" in short
    assert len(short.splitlines()) < 20 < len(full.splitlines())
    assert "processing → complete" in short


def test_missing_job_gives_none(app: Any) -> None:
    from gateway.trace import build_trace

    assert build_trace(app.extensions["gateway"].store, "job_nope") is None


def test_a_long_history_still_fits_one_screen(client: Any, app: Any) -> None:
    from gateway.trace import build_trace, render_trace

    ext = "noisy-" + uuid.uuid4().hex[:8]
    job_id = register(client, external_id=ext)["job"]["id"]
    first, _ = deliver(client, ext, "processing", offset_ms=-60000)
    for _ in range(60):  # a provider that redelivers the same event again and again
        deliver(client, ext, "processing", msg_id=first, offset_ms=-60000)
    done, _ = deliver(client, ext, "complete")
    data = build_trace(app.extensions["gateway"].store, job_id)
    assert data is not None
    lines = render_trace(data).splitlines()
    assert len(lines) <= 50
    assert any("rows not shown" in line for line in lines)
    assert any("registered" in line for line in lines[:10]) and done in lines[-1]
    assert len(render_trace(data, show_all=True).splitlines()) > 60


def test_linked_attempts_and_superseded_events(client: Any, app: Any) -> None:
    from gateway.trace import build_trace, render_trace

    ext, ext2 = "first-" + uuid.uuid4().hex[:8], "second-" + uuid.uuid4().hex[:8]
    job_id = register(client, external_id=ext)["job"]["id"]
    deliver(client, ext, "failed", offset_ms=-2000)
    r = client.post(f"/api/jobs/{job_id}/attempts", json={"source": "worker", "external_id": ext2}, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    old, _ = deliver(client, ext, "processing", offset_ms=500)  # the earlier id speaks after the link
    new, _ = deliver(client, ext2, "processing", offset_ms=600)
    data = build_trace(app.extensions["gateway"].store, job_id)
    assert data is not None
    decisions = {e.get("event_id"): e.get("decision") for e in data["timeline"]}
    assert decisions[old] == "superseded" and decisions[new] == "applied"
    assert [k["external_id"] for k in data["keys"]] == [ext, ext2]
    text = render_trace(data)
    assert f"attempts linked: worker/{ext2}" in text
    linked = next(line for line in text.splitlines() if "attempt_linked" in line)
    assert ext2 in linked and "linked" in linked
    assert "for an id an attempt link replaced" in text


def data_day(gw: Any, job_id: str) -> str:
    """The UTC day the job was created (a trace row shows only the time of its own day's stamps)."""
    job = gw.store.get_job(job_id)
    return job.created_at.strftime("%Y-%m-%d")
