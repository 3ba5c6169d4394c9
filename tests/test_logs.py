"""Structured logs: JSON lines, job ids and request ids on them, and no credential ever in them."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.logs import JsonFormatter, RequestContext, TextFormatter, redact, wants_text
from tests.conftest import API_KEY, ARTIFACTS, SECRET_KEY, server_env, write_config
from tests.servers import Server
from tests.signing import (
    STANDARD_SECRET,
    STANDARD_SECRET_2,
    STRIPE_SECRET,
    STRIPE_SECRET_2,
    standard_body,
    standard_headers,
    stripe_event,
    stripe_headers,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def logged_server(tmp_path_factory: pytest.TempPathFactory, sqlite_url: str) -> Any:
    d = tmp_path_factory.mktemp("logs")
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"logs-{os.getpid()}-{uuid.uuid4().hex[:6]}.log"
    srv = Server(server_env(sqlite_url, write_config(d / "gateway.toml"), GATEWAY_ACCESS_LOG="1"), log_path=log).start()
    yield srv, log
    srv.stop()


def test_no_secret_signature_or_token_reaches_the_logs(logged_server: Any) -> None:
    srv, log_path = logged_server
    base = srv.url
    leaks: list[str] = [API_KEY, "second-api-key-abcdefgh", SECRET_KEY, STANDARD_SECRET, STANDARD_SECRET_2, STRIPE_SECRET, STRIPE_SECRET_2]
    leaks += [s.removeprefix("whsec_") for s in (STANDARD_SECRET, STANDARD_SECRET_2)]

    ext = "leak-" + uuid.uuid4().hex[:8]
    r = requests.post(base + "/api/jobs", json={"source": "worker", "external_id": ext}, headers=AUTH, timeout=10)
    assert r.status_code == 201
    job_id, token = r.json()["job"]["id"], r.json()["token"]
    leaks.append(token)
    r = requests.post(base + "/api/tokens", json={"job": job_id, "scopes": ["read", "retry"]}, headers=AUTH, timeout=10)
    token2 = r.json()["token"]
    leaks.append(token2)
    # the query-string token (EventSource, long-poll) and the header one
    assert requests.get(f"{base}/api/jobs/{job_id}", params={"token": token}, timeout=10).status_code == 200
    assert requests.get(f"{base}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token2}"}, timeout=10).status_code == 200
    assert requests.get(f"{base}/api/jobs/{job_id}", params={"token": token + "x"}, timeout=10).status_code == 401
    assert requests.post(f"{base}/api/jobs/{job_id}/retry", params={"token": token2}, timeout=10).status_code in (401, 409)
    # signed webhooks, good and bad
    for state, secret in (("processing", STANDARD_SECRET), ("failed", STANDARD_SECRET_2), ("complete", "whsec_" + "Zm9v" * 8)):
        body = standard_body(ext, state)
        headers = standard_headers(secret, body)
        leaks += [part.split(",", 1)[1] for part in headers["webhook-signature"].split()]
        requests.post(base + "/webhooks/worker", data=body, headers=headers, timeout=10)
    body = stripe_event("payment_intent.processing", {"id": "pi_" + uuid.uuid4().hex[:12], "object": "payment_intent"})
    headers = stripe_headers(STRIPE_SECRET, body)
    leaks.append(headers["Stripe-Signature"])
    leaks += re.findall(r"v1=([0-9a-f]+)", headers["Stripe-Signature"])
    assert requests.post(base + "/webhooks/stripe", data=body, headers=headers, timeout=10).status_code == 200
    bad = stripe_headers("whsec_not_the_secret", body)
    leaks += re.findall(r"v1=([0-9a-f]+)", bad["Stripe-Signature"])
    assert requests.post(base + "/webhooks/stripe", data=body, headers=bad, timeout=10).status_code == 401
    # a garbage Authorization header is an input like any other
    requests.get(f"{base}/api/jobs/{job_id}/trace", headers={"Authorization": "Bearer " + SECRET_KEY}, timeout=10)
    r = requests.get(f"{base}/api/jobs/{job_id}/trace", headers={**AUTH, "X-Request-ID": "ticket-4711"}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "ticket-4711"

    srv.stop()  # flush and close every worker's stderr
    text = log_path.read_text()
    for secret in leaks:
        assert secret not in text, f"credential {secret[:8]}… found in {log_path}"
    assert "token=" not in text

    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    metrics_dir = next(line["msg"].split()[-1] for line in lines if line["msg"].startswith("metrics directory "))
    assert not os.path.exists(metrics_dir)  # the master removed the directory it made
    ours = [line for line in lines if line["logger"].startswith("gateway")]
    about_job = [line for line in ours if line.get("msg", "").startswith(("webhook applied", "job registered", "retry requested"))]
    assert about_job and all(line.get("job_id") == job_id for line in about_job)
    assert all(line.get("request_id") for line in ours if line["logger"] in ("gateway.ingest", "gateway.api"))
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert any(f"/api/jobs/{job_id}" in line["msg"] and "request_id=" in line["msg"] for line in access)
    job_reads = [line for line in access if line["path"] == f"/api/jobs/{job_id}"]
    assert job_reads and all(line["job_id"] == job_id and line["method"] == "GET" and len(line["request_id"]) == 32 for line in job_reads)
    assert {line["status"] for line in job_reads} == {"200", "401"}
    assert all(set(line) <= {"ts", "level", "logger", "msg", "method", "path", "status", "bytes", "ms", "remote_addr", "request_id", "job_id"} for line in access)
    assert any("request_id=ticket-4711" in line["msg"] for line in access)


def test_request_id_is_made_when_missing_or_unusable(client: Any) -> None:
    r = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    r = client.get("/healthz", headers={"X-Request-ID": "x" * 65})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


def test_lines_inside_a_job_route_carry_the_job_id(app: Any) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContext())
    logger = logging.getLogger("gateway.test-route")
    logger.addHandler(handler)

    @app.get("/api/jobs/<job_id>/log-probe")
    def probe(job_id: str) -> str:
        logger.warning("something about this job")
        return "ok"

    try:
        r = app.test_client().get("/api/jobs/job_abc/log-probe", headers={"X-Request-ID": "rid-1"})
        assert r.status_code == 200
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert (line["job_id"], line["request_id"], line["msg"]) == ("job_abc", "rid-1", "something about this job")


def test_text_on_a_terminal_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_LOG_FORMAT", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert wants_text()
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not wants_text()
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "text")
    assert wants_text()
    record = logging.LogRecord("gateway.ingest", logging.INFO, __file__, 1, "webhook %s", ("applied",), None)
    record.job_id = "job_x"
    record.note = "Bearer abc.def"
    line = TextFormatter().format(record)
    assert "webhook applied" in line and "job_id=job_x" in line and "abc.def" not in line


_token_chars = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(job=_token_chars, secret=st.binary(min_size=16, max_size=40), prefix=st.text(max_size=30), suffix=st.text(max_size=30))
def test_redact_masks_every_token_and_signature(job: str, secret: bytes, prefix: str, suffix: str) -> None:
    import base64

    from standardwebhooks.webhooks import Webhook

    from gateway.auth import Auth

    token, _ = Auth(SECRET_KEY, [], 3600).issue("job_" + job)
    whsec = "whsec_" + base64.b64encode(secret).decode()
    from datetime import datetime

    signature = Webhook(whsec).sign("msg_1", datetime.now(UTC), "{}")
    for value in (token, whsec, signature.split(",", 1)[1]):
        masked = redact(f"{prefix} {value} {suffix}")
        assert value not in masked


def test_formatter_output_is_one_json_line_even_with_odd_extras() -> None:
    record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "multi\nline %s", ("arg",), None)
    record.obj = object()
    record.path = Path("/tmp")
    out = JsonFormatter().format(record)
    assert "\n" not in out and json.loads(out)["msg"] == "multi\nline arg"


@pytest.fixture
def logging_restored() -> Any:
    """gunicorn's logger applies its logconfig_dict to this process's logging: put it back after."""
    loggers = [logging.getLogger(), logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.parametrize("access_log", [False, True])
def test_the_access_line_is_built_only_when_written_and_says_what_gunicorn_would(access_log: bool, logging_restored: Any) -> None:
    """``GatewayLogger``: with the access log off no atoms are built at all; with it on, the few
    atoms the gateway's format shows render the same line as gunicorn's full set, and the JSON
    line gets the same fields."""
    import datetime

    from gunicorn import glogging
    from gunicorn.config import Config

    from gateway.accesslog import GatewayLogger
    from gateway.logs import ACCESS_LOG_FORMAT, gunicorn_logconfig

    cfg = Config()
    cfg.set("logconfig_dict", gunicorn_logconfig(access_log))
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = GatewayLogger(cfg)
    assert logger.access_log_enabled is access_log

    class Resp:
        status, sent = "304 Not Modified", 0
        headers = [("ETag", '"job_1.3"'), ("X-Request-ID", 'rid-"1"')]

    class Req:
        headers = [("HOST", "127.0.0.1"), ("AUTHORIZATION", "Bearer secret")]

    environ = {
        "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "GET", "PATH_INFO": "/api/jobs/job_1", "SERVER_PROTOCOL": "HTTP/1.1",
        "RAW_URI": "/api/jobs/job_1?token=secret", "QUERY_STRING": "token=secret",
    }
    took = datetime.timedelta(seconds=1, microseconds=2500)
    ours = glogging.SafeAtoms(logger.atoms(Resp(), Req(), environ, took))
    gunicorns = glogging.SafeAtoms(glogging.Logger.atoms(logger, Resp(), Req(), environ, took))
    assert ACCESS_LOG_FORMAT % ours == ACCESS_LOG_FORMAT % gunicorns == '127.0.0.1 "GET /api/jobs/job_1 HTTP/1.1" 304 0 1002ms request_id=rid-\\"1\\"'
    records = [logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, ACCESS_LOG_FORMAT, (), None) for _ in range(2)]
    records[0].args, records[1].args = ours, gunicorns
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    assert lines[0] == {**lines[1], "ts": lines[0]["ts"]} and lines[0]["job_id"] == "job_1"
