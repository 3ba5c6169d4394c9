"""The pages run under the gateway's Content-Security-Policy (issue 13, finding 7): the demo page
loads and <job-status> renders jobs to complete with no violation reported by Chromium. Unlike
the other browser tests, this context does not bypass the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.mark.browser
def test_the_demo_page_runs_under_its_policy_in_chromium(chromium: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from gateway.migrate import upgrade
    from tests.conftest import server_env
    from tests.gwapp import config_file
    from tests.servers import Server, free_port

    db, port = f"sqlite:///{tmp_path / 'csp.db'}", free_port()
    upgrade(db)
    cfg = config_file(tmp_path, extra_gateway="demo = true", extra_sources='[sources.demo]\nadapter = "standard"\nsecrets_env = "WORKER_SECRETS"\n')
    srv = Server(server_env(db, cfg, GATEWAY_DEMO_URL=f"http://127.0.0.1:{port}"), workers=1, port=port).start()
    ctx = chromium.new_context()  # the policy applies: no bypass_csp here
    violations: list[str] = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(srv.url + "/?tick=0.2&start=0")
        page.get_by_role("button", name="Start 6 jobs").click()
        expect(page.locator("#jobs job-status[state=complete]").first).to_be_visible(timeout=60_000)  # no eval: the policy forbids it
    finally:
        ctx.close()
        srv.stop()
    assert violations == []
