"""No secret, signature or token in logs, error messages, the trace, the database's text or metrics.

``gateway serve`` runs for real with its access log on and the gateway's log at DEBUG; we drive
every path that handles a credential (good and bad signatures, tokens in headers and in the
query string, wrong API keys, expired tokens), then grep everything captured: the server's
whole output, every response (headers and body), each job's trace, /metrics, and every text
column the gateway wrote to the database.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
from sqlalchemy import text

from gateway.db import make_engine
from tests.conftest import API_KEY, ARTIFACTS, SECRET_KEY, TEST_ENV, write_config
from tests.servers import ROOT, free_port
from tests.signing import STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, STRIPE_SECRET_2, standard_body, standard_headers, stripe_event, stripe_headers

SECOND_API_KEY = "second-api-key-abcdefgh"


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gateway"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway serve did not become ready")


def test_no_secret_signature_or_token_anywhere(sqlite_url: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"secrets-{os.getpid()}.log"
    env = {**TEST_ENV, "GATEWAY_CONFIG": str(write_config(tmp_path / "gateway.toml")), "DATABASE_URL": sqlite_url,
           "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_ACCESS_LOG": "1"}
    proc, url = serve(env, log)
    key = {"Authorization": f"Bearer {API_KEY}"}
    sensitive: set[str] = {STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, STRIPE_SECRET_2, API_KEY, SECOND_API_KEY, SECRET_KEY}
    for s in (STANDARD_SECRET, STANDARD_SECRET_2):  # the raw key inside whsec_…
        sensitive.add(s.removeprefix("whsec_"))
        sensitive.add(base64.b64decode(s.removeprefix("whsec_")).decode())
    captured: list[str] = []
    jobs: list[str] = []

    def keep(r: requests.Response, *, issues_a_token: bool = False) -> requests.Response:
        """Capture a response; one that hands out a token (its purpose) is checked for it alone."""
        if issues_a_token:
            captured.append(json.dumps(dict(r.headers)) + "\n" + json.dumps({k: v for k, v in r.json().items() if k != "token"}))
        else:
            captured.append(json.dumps(dict(r.headers)) + "\n" + r.text)
        return r

    try:
        s = requests.Session()
        reg = keep(s.post(url + "/api/jobs", json={"source": "worker", "external_id": "sec-" + uuid.uuid4().hex[:8]}, headers=key), issues_a_token=True).json()
        job, token = reg["job"], reg["token"]
        jobs.append(job["id"])
        sensitive.add(token)
        minted = keep(s.post(url + "/api/tokens", json={"job": "job_secretcheck", "scopes": ["read", "retry"]}, headers=key), issues_a_token=True).json()["token"]
        sensitive.add(minted)
        keep(s.get(f"{url}/api/jobs/{job['id']}", headers={"Authorization": f"Bearer {token}"}))
        keep(s.get(f"{url}/api/jobs/{job['id']}?token={token}"))
        keep(s.get(f"{url}/api/jobs/{job['id']}?token={minted}"))  # a valid token for another job: 403
        keep(s.get(f"{url}/api/jobs/{job['id']}?token={token}x"))  # tampered: 401
        keep(s.get(f"{url}/api/jobs/{job['id']}/trace", headers={"Authorization": f"Bearer {token}"}))  # browser token on trace
        keep(s.get(f"{url}/api/jobs/{job['id']}/trace", headers={"Authorization": f"Bearer {SECRET_KEY}"}))  # a secret as a key
        keep(s.post(url + "/api/jobs", json={"source": "worker", "external_id": "x"}, headers={"Authorization": f"Bearer {API_KEY}x"}))
        for state in ("processing", "failed"):
            body = standard_body(job["external_id"], state, error={"code": "e", "message": "m"})
            headers = standard_headers(STANDARD_SECRET, body)
            sensitive.add(headers["webhook-signature"].split(",", 1)[1])
            # credentials a provider (or a proxy) adds are never stored with the delivery (§10)
            keep(s.post(url + "/webhooks/worker", data=body, headers={**headers, "Authorization": f"Bearer {SECOND_API_KEY}", "Cookie": f"t={token}"}))
        body = standard_body(job["external_id"], "complete")
        wrong = standard_headers(STANDARD_SECRET, body + " ")  # a valid signature of another body
        sensitive.add(wrong["webhook-signature"].split(",", 1)[1])
        keep(s.post(url + "/webhooks/worker", data=body, headers=wrong))
        keep(s.post(url + "/webhooks/worker", data=body, headers={**wrong, "webhook-signature": f"v1,{STANDARD_SECRET}"}))
        keep(s.post(url + "/webhooks/worker", data=body, headers={**wrong, "webhook-timestamp": "1"}))
        keep(s.post(f"{url}/api/jobs/{job['id']}/retry", headers={"Authorization": f"Bearer {token}"}))
        pi = "pi_" + uuid.uuid4().hex[:12]
        keep(s.post(url + "/api/jobs", json={"source": "stripe", "external_id": pi}, headers=key), issues_a_token=True)
        sbody = stripe_event("payment_intent.processing", {"id": pi, "object": "payment_intent"})
        sh = stripe_headers(STRIPE_SECRET, sbody)
        sensitive.add(sh["Stripe-Signature"].split("v1=", 1)[1].split(",")[0])
        keep(s.post(url + "/webhooks/stripe", data=sbody, headers=sh))
        keep(s.post(url + "/webhooks/stripe", data=sbody + "\n", headers=sh))
        keep(s.post(url + "/webhooks/stripe", data=sbody, headers=stripe_headers(STRIPE_SECRET_2, sbody, ts=1)))
        for jid in jobs:
            keep(s.get(f"{url}/api/jobs/{jid}/trace", headers=key))
        keep(s.get(url + "/metrics"))
        statuses = {r.split("\n", 1)[0] for r in captured}
        assert statuses  # every request above answered
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)

    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        for table in ("deliveries", "trace", "events", "jobs", "job_keys"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                values = dict(row._mapping)
                if values.get("headers"):  # a verified delivery's headers keep its signature, by design, for replay and forwarding
                    values["headers"] = {k: v for k, v in (json.loads(values["headers"]) or {}).items() if k.lower() not in ("webhook-signature", "stripe-signature")}
                captured.append(" ".join(str(v) for v in values.values()))
    engine.dispose()
    server_output = log.read_text()
    assert '"GET /api/jobs/' in server_output, "the access log must be on, or this test greps nothing"
    everything = server_output + "\n".join(captured)
    leaks = sorted(secret[:12] + "…" for secret in sensitive if secret in everything)
    assert leaks == [], f"secrets found in captured output: {leaks}"
