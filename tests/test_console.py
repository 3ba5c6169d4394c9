"""The support console (contract section 11) through the Flask test client, on both databases:
sign-in and sign-out, CSRF, search, a failed job's page and its Retry, deliveries and sources,
and that no page carries an API key or a webhook secret."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import API_KEY, TEST_ENV, register
from tests.gwapp import post_standard
from tests.signing import STANDARD_SECRET

LABEL_RE = re.compile(r"Signed in as (key:[0-9a-f]{10})")
REPLAY_RE = re.compile(r"/console/deliveries/([0-9]+)/replay")
SECRETS = [v for k, v in TEST_ENV.items() if k != "GATEWAY_SECRET_KEY"] + [API_KEY, "second-api-key-abcdefgh"]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: Any, key: str = API_KEY) -> Any:
    form = client.get("/console/signin")
    assert form.status_code == 200
    return client.post("/console/signin", data={"key": key, "csrf": csrf_of(form.get_data(as_text=True))})


def assert_no_secrets(html: str) -> None:
    for secret in SECRETS:
        for part in secret.split(","):
            assert part not in html, "a secret or API key on a console page"


def failed_job(client: Any) -> dict[str, Any]:
    reg = register(client, "worker", label="invoice run 42")
    ext = reg["job"]["external_id"]
    r = post_standard(client, "worker", STANDARD_SECRET, ext, "failed", error={"code": "render_failed", "message": "GPU out of memory"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return reg["job"]


def test_pages_need_a_session(client: Any) -> None:
    for path in ("/console/", "/console/deliveries", "/console/sources", "/console/jobs/anything"):
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"].endswith("/console/signin")


def test_wrong_key_opens_nothing_and_is_slowed(client: Any) -> None:
    r = sign_in(client, "not-a-key")
    assert r.status_code == 401 and "did not sign you in" in r.get_data(as_text=True)
    assert client.get("/console/").status_code == 302
    statuses = [sign_in(client, "wrong-%d" % i).status_code for i in range(8)]
    assert 429 in statuses


def test_sign_in_needs_the_double_submit_token(client: Any) -> None:
    client.get("/console/signin")
    r = client.post("/console/signin", data={"key": API_KEY})
    assert r.status_code == 403
    assert client.get("/console/").status_code == 302


def test_sign_in_cookie_flags(client: Any) -> None:
    r = sign_in(client)
    assert r.status_code == 302
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("gw_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
    assert API_KEY not in cookie


def test_search_external_id_lands_on_the_failed_job_and_retry(client: Any) -> None:
    job = failed_job(client)
    sign_in(client)
    r = client.get("/console/", query_string={"q": job["external_id"]})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/console/jobs/{job['id']}")
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "GPU out of memory" in page and "What failed" in page and ">Retry<" in page
    assert f'job-id="{job["id"]}"' in page and "jobstatus.js" in page
    label = LABEL_RE.search(page).group(1)  # type: ignore[union-attr]

    refused = client.post(f"/console/jobs/{job['id']}/retry", data={})
    assert refused.status_code == 403
    assert client.get(f"/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["state"] == "failed"

    done = client.post(f"/console/jobs/{job['id']}/retry", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    now = client.get(f"/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    assert now["state"] == "queued" and now["attempt"] == 2
    trace = client.get(f"/api/jobs/{job['id']}/trace", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    assert [e["by"] for e in trace["timeline"] if e["what"] == "retry"] == ["console:" + label]
    assert "console:" + label in client.get(f"/console/jobs/{job['id']}").get_data(as_text=True)


def test_search_by_delivery_id_label_and_request_id(client: Any) -> None:
    job = failed_job(client)
    sign_in(client)
    rows = client.get("/console/deliveries").get_data(as_text=True)
    assert job["id"] in rows
    from gateway.support import list_deliveries

    store = client.application.extensions["gateway"].store
    first = list_deliveries(store, job_id=job["id"])[0]
    from sqlalchemy import select

    from gateway.models import Delivery

    with store.reading() as session:
        delivery_id = session.scalars(select(Delivery.id).where(Delivery.job_id == job["id"])).first()
    for q in (first["request_id"], str(delivery_id), f"dlv_{delivery_id}"):
        r = client.get("/console/", query_string={"q": q})
        assert r.status_code == 302 and r.headers["Location"].endswith(job["id"]), q
    r = client.get("/console/", query_string={"q": "invoice run"})
    assert r.status_code == 200 and job["id"] in r.get_data(as_text=True)


def test_rejected_delivery_says_why_and_sources_count(client: Any) -> None:
    reg = register(client, "worker")
    bad = post_standard(client, "worker", "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", reg["job"]["external_id"], "processing")
    assert bad.status_code == 401
    sign_in(client)
    page = client.get("/console/deliveries", query_string={"outcome": "rejected", "source": "worker"}).get_data(as_text=True)
    assert "rejected (401)" in page and "the signature matched none of the source&#39;s 2 active secrets" in page
    sources = client.get("/console/sources").get_data(as_text=True)
    worker = re.search(r'<tr>\s*<th scope="row"><a href="/console/deliveries\?source=worker">worker</a></th>(.*?)</tr>', sources, re.S)
    assert worker, sources
    cells = re.findall(r'<td class="num">(.*?)</td>', worker.group(1), re.S)
    assert len(cells) == 6 and "outcome=rejected" in cells[3] and cells[-1] == "2"  # 5 outcomes (rejected: a link), secrets
    assert "s ago</td>" in worker.group(1) and 'aria-label="worker: ' in worker.group(1)


def test_sign_out_revokes_the_old_cookie(client: Any) -> None:
    sign_in(client)
    page = client.get("/console/").get_data(as_text=True)
    old = client.get_cookie("gw_console", path="/console/")
    assert old is not None
    assert client.post("/console/signout", data={}).status_code == 403  # sign-out needs CSRF too
    r = client.post("/console/signout", data={"csrf": csrf_of(page)})
    assert r.status_code == 302
    client.set_cookie("gw_console", old.value, path="/console/")
    assert client.get("/console/").status_code == 302


def test_no_page_holds_a_secret(client: Any) -> None:
    job = failed_job(client)
    sign_in(client)
    pages = ["/console/signin", "/console/", f"/console/?q={job['external_id'][:6]}", f"/console/jobs/{job['id']}",
             "/console/deliveries", "/console/sources"]
    for path in pages:
        r = client.get(path, follow_redirects=True)
        assert r.status_code == 200, path
        html = r.get_data(as_text=True)
        assert_no_secrets(html)
        assert "<script>" not in html and " onclick" not in html


def test_an_expired_session_opens_nothing(client: Any) -> None:
    from datetime import timedelta

    from gateway.ids import utcnow
    from gateway.models import ConsoleSession

    sign_in(client)
    assert client.get("/console/sources").status_code == 200
    store = client.application.extensions["gateway"].store
    with store.transaction() as w:
        for row in w.session.query(ConsoleSession).all():
            row.expires_at = utcnow() - timedelta(seconds=1)
        w.session.flush()
    assert client.get("/console/sources").status_code == 302


def test_deliveries_filter_by_time(client: Any) -> None:
    job = failed_job(client)
    sign_in(client)
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    fmt = "%Y-%m-%dT%H:%M"
    inside = client.get("/console/deliveries", query_string={"since": (now - timedelta(minutes=5)).strftime(fmt),
                                                             "until": (now + timedelta(minutes=5)).strftime(fmt)})
    assert inside.status_code == 200 and job["id"] in inside.get_data(as_text=True)
    later = client.get("/console/deliveries", query_string={"since": (now + timedelta(minutes=5)).strftime(fmt)}).get_data(as_text=True)
    assert job["id"] not in later and "No deliveries." in later
    earlier = client.get("/console/deliveries", query_string={"until": (now - timedelta(hours=1)).isoformat()}).get_data(as_text=True)
    assert job["id"] not in earlier
    bad = client.get("/console/deliveries", query_string={"since": "yesterday-ish", "source": "worker"})
    assert bad.status_code == 200 and "is not a time" in bad.get_data(as_text=True) and job["id"] in bad.get_data(as_text=True)
    older = client.get("/console/deliveries", query_string={"since": (now - timedelta(minutes=5)).strftime(fmt), "offset": "50"})
    assert older.status_code == 200


def test_sources_show_endpoints_and_resend_a_dead_message(db_url: str, tmp_path: Any) -> None:
    from gateway.messages import list_messages
    from tests.gwapp import gw_of, make_app
    from tests.receiver import Receiver

    answers = {"status": 500}
    receiver = Receiver(respond=lambda n, req: (answers["status"], b"no")).start()
    try:
        endpoints = f"""
[endpoints.backend]
url = "http://user:secretpw@{receiver.url.removeprefix('http://')}/hooks?token=urltok4711"
secret_env = "BACKEND_SECRET"
"""
        app = make_app(db_url, tmp_path, endpoints, "forward_retry_for = 0", BACKEND_SECRET="whsec_" + "Zm9yd2FyZC1zZWNyZXQtZm9yLXRoZS10ZXN0cy0wMDE=")
        client = app.test_client()
        job = register(client, "worker")["job"]
        app.extensions["forward_senders"]["backend"].drain()
        sign_in(client)
        page = client.get("/console/sources").get_data(as_text=True)
        assert "Forwarding endpoints" in page and ">backend<" in page
        assert "secretpw" not in page and "urltok4711" not in page and "Zm9yd2FyZC1zZWNyZXQ" not in page
        dead = [m for m in list_messages(gw_of(app).store, endpoint="backend", dead_only=True) if m["job_id"] == job["id"]]
        assert dead and f"/console/messages/{dead[0]['id']}/resend" in page
        assert re.search(r"<dt>Dead</dt><dd class=\"error\">[1-9]", page)

        assert client.post(f"/console/messages/{dead[0]['id']}/resend", data={}).status_code == 403
        answers["status"] = 200
        r = client.post(f"/console/messages/{dead[0]['id']}/resend", data={"csrf": csrf_of(page)})
        assert r.status_code == 303 and "/console/sources" in r.headers["Location"]
        assert all(m["id"] != dead[0]["id"] for m in list_messages(gw_of(app).store, endpoint="backend", dead_only=True))
        label = LABEL_RE.search(page).group(1)  # type: ignore[union-attr]
        trace = client.get(f"/api/jobs/{job['id']}/trace", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
        assert any(e.get("what") == "forward_resend" and e.get("by") == "console:" + label for e in trace["timeline"])
        app.extensions["forward_senders"]["backend"].drain()
        assert any(q.status == 200 for q in receiver.requests)
        after = client.get("/console/sources").get_data(as_text=True)
        assert re.search(r"<dt>Pending</dt><dd>0</dd>", after)
    finally:
        receiver.stop()


def test_a_stored_delivery_is_replayed_from_the_job_page(client: Any) -> None:
    job = failed_job(client)
    forged = post_standard(client, "worker", "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", job["external_id"], "complete")
    assert forged.status_code == 401
    sign_in(client)
    page = client.get(f"/console/jobs/{job['id']}").get_data(as_text=True)
    actions = REPLAY_RE.findall(page)
    assert len(actions) == 1, "one verified delivery, one Replay button"
    delivery_id = actions[0]
    listed = client.get("/console/deliveries", query_string={"source": "worker"}).get_data(as_text=True)
    assert delivery_id in REPLAY_RE.findall(listed)
    rejected = client.get("/console/deliveries", query_string={"source": "worker", "outcome": "rejected"}).get_data(as_text=True)
    assert "rejected (401)" in rejected and not REPLAY_RE.findall(rejected), "Replay on verified deliveries only"
    label = LABEL_RE.search(page).group(1)  # type: ignore[union-attr]
    assert client.post(f"/console/deliveries/{delivery_id}/replay", data={"job": job["id"]}).status_code == 403
    assert client.post("/console/deliveries/not-a-number/replay", data={"csrf": csrf_of(page)}).status_code == 404

    done = client.post(f"/console/deliveries/{delivery_id}/replay", data={"csrf": csrf_of(page), "job": job["id"]})
    assert done.status_code == 303 and done.headers["Location"].endswith(f"/console/jobs/{job['id']}#story")
    trace = client.get(f"/api/jobs/{job['id']}/trace", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()
    replays = [e for e in trace["timeline"] if e["what"] == "replay"]
    assert [(e["delivery_id"], e["by"], e["outcome"]) for e in replays] == [(int(delivery_id), "console:" + label, "duplicate")]
    after = client.get(f"/console/jobs/{job['id']}").get_data(as_text=True)
    assert f"replay of delivery dlv_{delivery_id} requested by console:{label}: duplicate" in after
    # the job is as it was: the replayed event was already applied
    assert client.get(f"/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {API_KEY}"}).get_json()["state"] == "failed"
