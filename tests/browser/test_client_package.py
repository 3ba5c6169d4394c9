"""The browser client as a package (issue 20): the tarball `npm pack` makes, installed and
bundled with esbuild into a React app under StrictMode, against a real gunicorn gateway in real
Chromium — all six states through `useJobStatus` and `<JobStatus>`, a job id change mid-watch,
unmount with no socket left open, token renewal across expiries — and `tsc --noEmit` over a
typed example that uses every exported type."""

from __future__ import annotations

import gzip
import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.client_package import PackedApp, pack_and_install
from tests.browser.conftest import Gateway, new_job_id, wait_until
from tests.conftest import API_KEY, ARTIFACTS, TEST_SOURCES, server_env
from tests.servers import Server, free_port

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>react client</title></head>
<body><div id="root"></div><script type="module" src="/__app__/app.js"></script></body></html>"""
EXPECTED_FILES = {"package.json", "jobstatus.js", "jobstatus.d.ts", "react.js", "react.d.ts", "vue.js", "vue.d.ts"}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> PackedApp:
    return pack_and_install(tmp_path_factory.mktemp("client-package"))


@pytest.fixture(scope="module")
def react_bundle(packed: PackedApp) -> bytes:
    """The test app, bundled in development mode (StrictMode runs every effect twice)."""
    return packed.esbuild("app/react-app.jsx", "out/app.js", '--define:process.env.NODE_ENV="development"').read_bytes()


@pytest.fixture(scope="module")
def vue_bundle(packed: PackedApp) -> bytes:
    return packed.esbuild("app/vue-app.js", "out/vue.js", '--define:process.env.NODE_ENV="production"',
                          "--define:__VUE_OPTIONS_API__=true", "--define:__VUE_PROD_DEVTOOLS__=false",
                          "--define:__VUE_PROD_HYDRATION_MISMATCH_DETAILS__=false").read_bytes()


@pytest.fixture(scope="module")
def client_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gunicorn with one worker of its own, so its watcher gauges count this module's pages only."""
    d = tmp_path_factory.mktemp("client-gateway")
    url_db = f"sqlite:///{d / 'gateway.db'}"
    from gateway.migrate import upgrade

    upgrade(url_db)
    port = free_port()
    cfg = d / "gateway.toml"
    cfg.write_text(textwrap.dedent(f"""
        [gateway]
        allowed_origins = [{json.dumps(f"http://127.0.0.1:{port}")}]
        {TEST_SOURCES}
    """))
    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(server_env(url_db, cfg), workers=1, port=port, log_path=ARTIFACTS / f"gunicorn-client-{os.getpid()}.log").start()
    (d / "requests.log").touch()
    yield Gateway(server, d / "requests.log")
    server.stop()


def gauge(gw: Gateway, name: str) -> float:
    text = requests.get(gw.url + "/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def mint(gw: Gateway, job_id: str, ttl: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"job": job_id, "scopes": ["read", "retry"]}
    if ttl:
        body["ttl"] = ttl
    r = requests.post(gw.url + "/api/tokens", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 201, r.text
    return {"token": r.json()["token"], "expires_at": r.json()["expires_at"]}


class App:
    """The bundled React app in a page at the gateway's origin, and the sockets the page opened."""

    def __init__(self, page: Any, gw: Gateway, bundle: bytes, token_ttl: int | None = None):
        self.page, self.gw = page, gw
        self.sockets: list[Any] = []
        self.frames: list[str] = []  # every frame the gateway sent the page
        page.on("websocket", self._socket)
        page.route(gw.url + "/__app__", lambda r: r.fulfill(status=200, content_type="text/html", body=PAGE))
        page.route(gw.url + "/__app__/app.js", lambda r: r.fulfill(status=200, content_type="text/javascript", body=bundle))
        page.route(gw.url + "/__token__?*", self._token)
        self.token_ttl = token_ttl
        page.goto(gw.url + "/__app__")
        page.wait_for_function("window.app !== undefined")
        self.probe = page.locator("#probe")
        self.view = page.locator("[data-part=box]")

    def _socket(self, ws: Any) -> None:
        self.sockets.append(ws)
        ws.on("framereceived", lambda payload: self.frames.append(payload if isinstance(payload, str) else payload.decode()))

    def _token(self, route: Any) -> None:
        """The integrator's backend: a fresh token for the job the page asks about."""
        job_id = route.request.url.split("job=", 1)[1]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(mint(self.gw, job_id, self.token_ttl)))

    def watch(self, job_id: str | None, token: str = "", initial: dict[str, Any] | None = None, renew: bool = False) -> None:
        self.page.evaluate("([id, tok, init, renew]) => window.app.watch(id, tok, init, renew)", [job_id, token, initial, renew])

    def open_sockets(self) -> int:
        return sum(1 for ws in self.sockets if not ws.is_closed())

    def renders(self) -> list[dict[str, Any]]:
        return self.page.evaluate("window.app.renders")


def text(app: App) -> Any:
    return app.view.locator("[data-part=message]")


# -- the tarball and the types ----------------------------------------------------------------------


def test_the_tarball_holds_the_client_its_types_and_wrappers_and_nothing_else(packed: PackedApp) -> None:
    assert set(packed.files) == EXPECTED_FILES
    manifest = json.loads((packed.installed / "package.json").read_text())
    assert manifest["type"] == "module" and manifest["license"] == "MIT"
    assert not manifest.get("dependencies")  # no runtime dependencies; React and Vue are optional peers
    assert set(manifest["peerDependencies"]) == {"react", "vue"}
    assert all(manifest["peerDependenciesMeta"][name]["optional"] for name in ("react", "vue"))
    assert manifest["exports"]["."] == {"types": "./jobstatus.d.ts", "default": "./jobstatus.js"}
    assert manifest["exports"]["./react"]["default"] == "./react.js"
    # The installed module is the file the gateway serves as /static/jobstatus.js.
    served = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "jobstatus.js").read_bytes()
    assert (packed.installed / "jobstatus.js").read_bytes() == served
    # What an app ships: the client minified by its bundler, gzipped (aim: under 10 KB).
    minified = packed.esbuild("node_modules/@job-gateway/client/jobstatus.js", "out/min.js", "--minify").read_bytes()
    sizes = {"tarball": packed.tarball.stat().st_size, "jobstatus.js": len(served), "jobstatus.js.gz": len(gzip.compress(served, 9)),
             "minified.gz": len(gzip.compress(minified, 9))}
    print(json.dumps({"client_package_bytes": sizes, "files": packed.files}))
    assert sizes["minified.gz"] < 10 * 1024, sizes


def test_tsc_accepts_a_typed_example_using_every_exported_type_and_refuses_a_wrong_one(packed: PackedApp) -> None:
    good = packed.tsc("typed/tsconfig.json")
    assert good.returncode == 0, good.stdout + good.stderr
    # The React page of docs/integration.md, copied as an integrator would, type-checks too.
    docs = (Path(__file__).resolve().parents[2] / "docs" / "integration.md").read_text()
    snippet = docs.split("### React", 1)[1].split("```tsx\n", 1)[1].split("```", 1)[0]
    (packed.root / "typed" / "docs-react.tsx").write_text(snippet)
    (packed.root / "typed" / "docs.json").write_text(json.dumps({"extends": "./tsconfig.json", "files": ["docs-react.tsx"]}))
    docs_check = packed.tsc("typed/docs.json")
    assert docs_check.returncode == 0, docs_check.stdout + docs_check.stderr
    # The types are real, not `any`: a phase outside the six and a wrong option fail the check.
    (packed.root / "typed" / "wrong.ts").write_text(textwrap.dedent("""
        import type { Phase } from "@job-gateway/client";
        import { watchJob } from "@job-gateway/client";
        const phase: Phase = "done";
        watchJob("job_1", { transports: ["carrier-pigeon"] });
        export { phase };
    """))
    (packed.root / "typed" / "wrong.json").write_text(json.dumps({"extends": "./tsconfig.json", "files": ["wrong.ts"]}))
    bad = packed.tsc("typed/wrong.json")
    assert bad.returncode != 0
    assert bad.stdout.count("error TS2322") >= 2, bad.stdout


# -- the React hook and component in Chromium ---------------------------------------------------------


def test_the_hook_and_component_render_all_six_states_under_strict_mode(page, client_gateway: Gateway, react_bundle: bytes) -> None:
    gw = client_gateway
    app = App(page, gw, react_bundle)
    expect(app.probe).to_have_attribute("data-phase", "empty")
    expect(text(app)).to_have_text("Starting job…")
    assert app.open_sockets() == 0  # no job id, no connection

    job_id = new_job_id()
    token = gw.token(job_id)  # watching before the backend registered the job
    app.watch(job_id, token)
    expect(app.probe).to_have_attribute("data-phase", "loading")
    expect(text(app)).to_have_text("Checking status…")
    expect(app.probe).to_have_attribute("data-transport", "websocket")

    reg = gw.register(job_id, queue="imports-" + job_id[-6:], label="Import customers.csv")
    gw.webhook(reg["external_id"], "queued", queue={"name": "imports", "position": 4, "total": 12})
    expect(text(app)).to_have_text("Queued — position 4 of 12")
    expect(app.probe).to_have_attribute("data-phase", "queued")
    expect(app.view.locator("[data-part=label]")).to_have_text("Import customers.csv")

    gw.webhook(reg["external_id"], "processing", progress={"current": 1240, "total": 4000, "step": "importing rows"})
    expect(text(app)).to_have_text("Processing row 1,240 of 4,000 — importing rows")
    expect(app.probe).to_have_attribute("data-phase", "processing")
    bar = app.view.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "1240")
    expect(bar).to_have_attribute("aria-valuemax", "4000")

    gw.webhook(reg["external_id"], "failed", error={"code": "bad_row", "message": "Row 1,241: missing email", "retryable": True})
    expect(app.probe).to_have_attribute("data-phase", "failed")
    expect(text(app)).to_have_text("Failed — Row 1,241: missing email")
    expect(app.view.get_by_role("link", name="Contact support")).to_have_attribute("href", f"mailto:help@gateway.test?subject=Job%20{job_id}%20failed&body=" + requests.utils.quote(f"Job id: {job_id}\nError: bad_row: Row 1,241: missing email\nAttempt: 1\n", safe=""))

    app.view.get_by_role("button", name="Retry").click()  # through the hook's retry()
    expect(app.probe).to_have_attribute("data-phase", "queued")
    gw.webhook(reg["external_id"], "complete", result={"url": "https://files.example.com/report.csv"})
    expect(app.probe).to_have_attribute("data-phase", "complete")
    expect(text(app)).to_have_text("Complete")
    expect(app.view.get_by_role("link", name="View result")).to_have_attribute("href", "https://files.example.com/report.csv")
    assert gw.job(job_id)["attempt"] == 2
    # StrictMode ran every effect twice: each watcher closed its own socket, and the gateway saw
    # them go (complete is terminal: nothing is left open at all).
    wait_until(lambda: app.open_sockets() == 0, what="every socket closed after complete", page=page)
    wait_until(lambda: gauge(gw, "gateway_ws_subscriptions") == 0, what="no subscription left on the gateway")
    phases = [r["phase"] for r in app.renders()]
    assert {"empty", "loading", "queued", "processing", "failed", "complete"} <= set(phases)


def test_a_job_id_change_mid_watch_never_shows_the_old_job_and_unmount_leaves_no_socket(page, client_gateway: Gateway, react_bundle: bytes) -> None:
    gw = client_gateway
    app = App(page, gw, react_bundle)
    first, second = gw.register(), gw.register()
    a, b = first["job"]["id"], second["job"]["id"]
    app.watch(a, first["token"])
    gw.webhook(first["external_id"], "processing", progress={"current": 5, "total": 10})
    expect(app.probe).to_have_attribute("data-version", str(gw.job(a)["version"]))
    expect(app.probe).to_have_attribute("data-phase", "processing")
    # Two watchers (the probe's hook and <JobStatus>'s), one socket each: StrictMode's first effects closed theirs.
    wait_until(lambda: app.open_sockets() == 2, what="one socket per watcher, whatever StrictMode did", page=page)
    wait_until(lambda: gauge(gw, "gateway_ws_connections") == 2, what="two connections on the gateway")

    app.watch(b, second["token"])
    expect(app.probe).to_have_attribute("data-job", b)
    expect(app.probe).to_have_attribute("data-phase", "queued")
    gw.webhook(first["external_id"], "complete")  # the old job moves on; the page must not care
    gw.webhook(second["external_id"], "processing", progress={"step": "validating"})
    expect(text(app)).to_have_text("Processing — validating")
    wait_until(lambda: app.open_sockets() == 2, what="the first job's sockets closed", page=page)
    wait_until(lambda: gauge(gw, "gateway_ws_subscriptions") == 2, what="only the second job's subscriptions on the gateway")
    assert len(app.sockets) >= 4  # the first job's pair and the second job's pair (StrictMode's discarded pair may never have connected)
    assert not [r for r in app.renders() if r["jobId"] == b and r["shownId"] == a], "the old job was shown under the new id"

    page.evaluate("window.app.unmount()")
    expect(page.locator("#gone")).to_be_visible()
    wait_until(lambda: app.open_sockets() == 0, what="no socket left open after unmount", page=page)
    wait_until(lambda: gauge(gw, "gateway_ws_connections") == 0, what="the gateway saw every connection go")
    assert gauge(gw, "gateway_ws_subscriptions") == 0


def test_initial_is_the_first_paint_and_only_newer_versions_follow(page, client_gateway: Gateway, react_bundle: bytes) -> None:
    gw = client_gateway
    app = App(page, gw, react_bundle)
    reg = gw.register()
    gw.webhook(reg["external_id"], "processing", progress={"current": 3, "total": 9})
    snapshot = gw.job(reg["job"]["id"])
    app.watch(snapshot["id"], reg["token"], snapshot)
    expect(text(app)).to_have_text("Processing row 3 of 9…")
    renders = [r for r in app.renders() if r["jobId"] == snapshot["id"]]
    assert renders and all(r["phase"] == "processing" for r in renders), renders  # never "Checking status…"
    gw.webhook(reg["external_id"], "processing", progress={"current": 4, "total": 9})
    expect(text(app)).to_have_text("Processing row 4 of 9…")


def test_get_token_keeps_the_hook_watching_across_two_expiries_with_no_version_missed(page, client_gateway: Gateway, react_bundle: bytes) -> None:
    ttl = 3
    gw = client_gateway
    app = App(page, gw, react_bundle, token_ttl=ttl)
    reg = gw.register()
    job_id = reg["job"]["id"]
    first = mint(gw, job_id, ttl)
    app.watch(job_id, first["token"], None, True)
    expect(app.probe).to_have_attribute("data-phase", "queued")
    # Changes one after another until two renewed tokens have been in use past their predecessors' expiry.
    # Two watchers renew (the probe's hook and <JobStatus>): two renewals each is four calls.
    step, give_up = 0, time.time() + 2 * ttl + 30
    while app.page.evaluate("window.app.tokenCalls") < 4 or time.time() < first["expires_at"] + 2 * ttl:
        step += 1
        gw.webhook(reg["external_id"], "processing", progress={"current": step, "total": 1000})
        expect(app.probe).to_have_attribute("data-version", str(gw.job(job_id)["version"]))
        assert time.time() < give_up, "the token was not renewed twice"
        page.wait_for_timeout(200)  # pacing, not synchronisation: a change every moment of the expiries
    seen = app.page.evaluate(f"window.app.versions[{json.dumps(job_id)}]")
    assert seen == list(range(seen[0], seen[-1] + 1)), seen  # every version, in order
    expect(app.probe).to_have_attribute("data-error", "")
    expect(app.probe).to_have_attribute("data-transport", "websocket")
    assert time.time() > first["expires_at"] + ttl
    # Renewed before each expiry, on the same sockets: the gateway never had to end a subscription.
    assert not [f for f in app.frames if "token_expired" in f]
    assert len(app.sockets) == 2


def test_the_vue_composable_follows_a_job_changes_id_and_closes_on_unmount(page, client_gateway: Gateway, vue_bundle: bytes) -> None:
    gw = client_gateway
    app = App(page, gw, vue_bundle)
    expect(app.probe).to_have_attribute("data-phase", "empty")
    first, second = gw.register(), gw.register()
    app.watch(first["job"]["id"], first["token"])
    expect(app.probe).to_have_attribute("data-phase", "queued")
    gw.webhook(first["external_id"], "processing", progress={"current": 2, "total": 5})
    expect(app.probe).to_have_text("Processing row 2 of 5…")
    app.watch(second["job"]["id"], second["token"])
    expect(app.probe).to_have_attribute("data-job", second["job"]["id"])
    gw.webhook(second["external_id"], "failed", error={"code": "x", "message": "boom"})
    expect(app.probe).to_have_text("Failed — boom")
    wait_until(lambda: app.open_sockets() == 1, what="the first job's socket closed", page=page)
    page.evaluate("window.app.unmount()")
    expect(page.locator("#gone")).to_be_visible()
    wait_until(lambda: app.open_sockets() == 0, what="no socket left after unmount", page=page)
    wait_until(lambda: gauge(gw, "gateway_ws_connections") == 0, what="the gateway saw the connection go")
