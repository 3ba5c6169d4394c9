"""Next-attempt linking: the integrator re-runs the work under a new provider id and attaches it to
the same job; the new id drives the job, the old one's late news stays in the trace only."""

from __future__ import annotations

from typing import Any

from tests.conftest import register
from tests.gwapp import post_standard
from tests.signing import STANDARD_SECRET, iso_now


def get(client, job_id, auth) -> dict[str, Any]:
    return client.get(f"/api/jobs/{job_id}", headers=auth).get_json()


def link(client, job_id, auth, external_id, source="worker"):
    return client.post(f"/api/jobs/{job_id}/attempts", json={"source": source, "external_id": external_id}, headers=auth)


def deliveries(client, job_id, auth) -> list[dict[str, Any]]:
    timeline = client.get(f"/api/jobs/{job_id}/trace", headers=auth).get_json()["timeline"]
    return [e for e in timeline if e["what"] == "delivery"]


def test_retry_then_link_new_id_drives_and_old_id_is_superseded(client, auth):
    reg = register(client, "worker")
    job_id, old = reg["job"]["id"], reg["job"]["external_id"]
    post_standard(client, "worker", STANDARD_SECRET, old, "failed", error={"code": "oom"})
    assert client.post(f"/api/jobs/{job_id}/retry", headers=auth).status_code == 202
    new = old + "-rerun"
    r = link(client, job_id, auth, new)
    assert r.status_code == 200
    assert (r.get_json()["state"], r.get_json()["attempt"]) == ("queued", 2)  # the retry's attempt, now bound to the new id

    post_standard(client, "worker", STANDARD_SECRET, new, "processing", progress={"current": 3, "total": 10, "step": "rendering"})
    job = get(client, job_id, auth)
    assert (job["state"], job["attempt"], job["progress"]) == ("processing", 2, {"current": 3, "total": 10, "step": "rendering"})

    # the first run was not dead after all: its late news is recorded, not applied
    version = job["version"]
    r = post_standard(client, "worker", STANDARD_SECRET, old, "complete", occurred_at=iso_now(5), result={"from": "old"})
    assert r.get_json() == {"status": "accepted"}
    job = get(client, job_id, auth)
    assert (job["state"], job["attempt"], job["version"], job["result"]) == ("processing", 2, version, None)
    late = [d for d in deliveries(client, job_id, auth) if d["external_id"] == old and d["decision"] == "superseded"]
    assert len(late) == 1 and late[0]["state_after"] == "processing"

    post_standard(client, "worker", STANDARD_SECRET, new, "complete", occurred_at=iso_now(10), result={"from": "new"})
    job = get(client, job_id, auth)
    assert (job["state"], job["attempt"], job["result"]) == ("complete", 2, {"from": "new"})


def test_link_after_failure_opens_the_next_attempt_without_a_retry(client, auth):
    reg = register(client, "worker")
    job_id, old = reg["job"]["id"], reg["job"]["external_id"]
    post_standard(client, "worker", STANDARD_SECRET, old, "failed")
    r = link(client, job_id, auth, old + "-2")
    assert (r.get_json()["state"], r.get_json()["attempt"]) == ("queued", 2)
    assert link(client, job_id, auth, old + "-2").get_json()["attempt"] == 2  # repeating the link changes nothing
    post_standard(client, "worker", STANDARD_SECRET, old + "-2", "complete", occurred_at=iso_now(5))
    assert get(client, job_id, auth)["state"] == "complete"


def test_events_that_came_before_the_link_are_adopted(client, auth):
    reg = register(client, "worker")
    job_id, old = reg["job"]["id"], reg["job"]["external_id"]
    post_standard(client, "worker", STANDARD_SECRET, old, "failed")
    early = old + "-early"
    r = post_standard(client, "worker", STANDARD_SECRET, early, "processing", occurred_at=iso_now(5), progress={"current": 1, "total": 2})
    assert r.get_json() == {"status": "accepted"}  # held: no job knows this id yet
    link(client, job_id, auth, early)
    job = get(client, job_id, auth)
    assert (job["state"], job["attempt"], job["progress"]["current"]) == ("processing", 2, 1)


def test_link_refusals(client, auth):
    a = register(client, "worker")
    b = register(client, "worker")
    r = link(client, a["job"]["id"], auth, b["job"]["external_id"])
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "key_taken")
    post_standard(client, "worker", STANDARD_SECRET, a["job"]["external_id"], "complete")
    r = link(client, a["job"]["id"], auth, "brand-new-id")
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "job_complete")
    r = link(client, a["job"]["id"], auth, "x", source="nosuch")
    assert (r.status_code, r.get_json()["error"]["code"]) == (400, "unknown_source")
    assert link(client, "job_missing", auth, "y").status_code == 404
    assert client.post(f"/api/jobs/{a['job']['id']}/attempts", json={"source": "worker", "external_id": "z"},
                       headers={"Authorization": f"Bearer {a['token']}"}).status_code in (401, 403)  # browser tokens cannot link
