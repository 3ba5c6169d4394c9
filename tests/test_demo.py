"""`/` and the demo API without a browser: the landing page when the demo is off, the demo
page and its input checks when it is on, and the client module being served."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import SourceConfig
from gateway.simulator import MAX_BATCH, plan_fate
from tests.conftest import make_config
from tests.signing import STANDARD_SECRET


def demo_app(db_url: str, tmp_path: Path, *, with_source: bool = True):
    from gateway.app import create_app

    config = make_config(db_url, tmp_path)
    sources = dict(config.sources)
    if with_source:
        sources["demo"] = SourceConfig(name="demo", adapter="standard", secrets_env="DEMO_SECRETS", secrets=(STANDARD_SECRET,))
    return create_app(dataclasses.replace(config, demo=True, sources=sources, support_email="help@example.test"), background=False)


def test_without_the_demo_root_is_a_landing_page_and_the_demo_api_is_off(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.content_type
    html = page.get_data(as_text=True)
    assert "/static/jobstatus.js" in html and "Start 6 jobs" not in html
    off = client.post("/demo/jobs", json={"count": 1})
    assert off.status_code == 404 and off.get_json()["error"]["code"] == "demo_disabled"


def test_the_client_module_is_served_as_javascript(client):
    r = client.get("/static/jobstatus.js")
    assert r.status_code == 200 and "javascript" in r.content_type
    body = r.get_data(as_text=True)
    assert "export function watchJob" in body and 'customElements.define("job-status"' in body


def test_the_demo_page_carries_the_support_address(db_url, tmp_path):
    client = demo_app(db_url, tmp_path).test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'data-support-email="help@example.test"' in html and "Start 6 jobs" in html and "/static/demo.js" in html


def test_the_demo_without_its_source_says_what_is_missing(db_url, tmp_path):
    client = demo_app(db_url, tmp_path, with_source=False).test_client()
    assert "[sources.demo]" in client.get("/").get_data(as_text=True)
    r = client.post("/demo/jobs", json={"count": 1})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "demo_source_missing"


@pytest.mark.parametrize("body, code", [
    ({"count": 0}, "invalid_count"), ({"count": MAX_BATCH + 1}, "invalid_count"), ({"count": True}, "invalid_count"),
    ({"count": "3"}, "invalid_count"), ({"tick": 0}, "invalid_tick"), ({"tick": 60}, "invalid_tick"), ({"tick": float("nan")}, "invalid_tick"),
])
def test_demo_input_is_checked(db_url, tmp_path, body, code):
    client = demo_app(db_url, tmp_path).test_client()
    r = client.post("/demo/jobs", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == code


def test_a_demo_result_exists_only_for_a_complete_demo_job(db_url, tmp_path):
    client = demo_app(db_url, tmp_path).test_client()
    r = client.get("/demo/results/job_nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "result_not_found"


def test_a_batch_shows_both_endings_and_progress_without_totals():
    fates = [plan_fate(i) for i in range(6)]
    assert sum(f == "fail" for f, _ in fates) == 2 and sum(f == "complete" for f, _ in fates) == 4
    assert any(not counted for _, counted in fates) and any(counted for _, counted in fates)


def test_the_favicon_is_served_not_a_404(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.content_type.startswith("image/svg+xml") and b"<svg" in r.get_data()
    assert 'rel="icon"' in client.get("/").get_data(as_text=True)


def test_the_demo_page_starts_a_small_batch_by_itself(db_url, tmp_path):
    html = demo_app(db_url, tmp_path).test_client().get("/").get_data(as_text=True)
    assert 'data-autostart="3"' in html
