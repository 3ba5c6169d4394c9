"""`gateway send`: every sample of every built-in source, signed with the source's configured
secret, is accepted by a real gunicorn gateway and moves the registered job to the state the
sample maps to; the signers agree with the providers' own code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from click.testing import CliRunner

from adapters.samples import build, find_sample, samples
from gateway.cli import main
from tests.conftest import TEST_ENV, write_config
from tests.servers import Server

#: the test configuration's sources (tests/conftest.py) and their adapters
SOURCES = {"worker": "standard", "stripe": "stripe", "replicate": "replicate", "github": "github", "twilio": "twilio",
           "twilio-direct": "twilio", "mux": "mux", "render": "render"}
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def run(tmp_path: Path, *args: str) -> Any:
    env = {**TEST_ENV, "GATEWAY_CONFIG": str(write_config(tmp_path / "send.toml")), "DATABASE_URL": "sqlite:///unused"}
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


CASES = [(source, s.name) for source, adapter in SOURCES.items() for s in samples(adapter) if s.state]


@pytest.mark.parametrize("source,name", CASES)
def test_every_sample_is_accepted_and_moves_a_job(server: Server, tmp_path: Path, source: str, name: str) -> None:
    out = run(tmp_path, "send", source, name, "--to", server.url, "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["webhook"] == {"status": 200, "body": {"status": "accepted"}}, result
    job = result["job"]
    assert job["source"] == source and job["external_id"] == result["external_id"]
    assert job["state"] == result["maps_to"] == find_sample(SOURCES[source], name).state
    if job["state"] != "queued":  # a registered job starts queued: a queued event changes nothing
        assert job["version"] >= 2


def test_one_external_id_moves_one_job_through_its_states(server: Server, tmp_path: Path) -> None:
    ext = "pi_" + uuid.uuid4().hex[:20]
    seen, ids = [], set()
    for event in ("payment_intent.created", "payment_intent.processing", "payment_intent.succeeded"):
        out = run(tmp_path, "send", "stripe", event, "--external-id", ext, "--to", server.url)
        assert out.exit_code == 0, out.output
        assert 'gateway answered 200 {"status": "accepted"}' in out.output
        seen.append(out.output.split(" is now ", 1)[1].split()[0])
        ids.add(out.output.split(" is now ", 1)[0].rsplit("job ", 1)[1])
    assert seen == ["queued", "processing", "complete"] and len(ids) == 1


def test_an_event_with_no_state_is_ignored_and_the_job_stays_queued(server: Server, tmp_path: Path) -> None:
    result = json.loads(run(tmp_path, "send", "stripe", "customer.created", "--to", server.url, "--json").output)
    assert result["webhook"]["body"] == {"status": "ignored"} and result["job"]["state"] == "queued"


def test_the_issue_line_as_a_new_user_types_it(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, **TEST_ENV, "GATEWAY_CONFIG": str(write_config(tmp_path / "g.toml")), "GATEWAY_URL": server.url}
    out = subprocess.run([GATEWAY, "send", "stripe", "payment_intent.succeeded"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "is now complete" in out.stdout
    assert not (tmp_path / "gateway.db").exists()  # send talks HTTP; it opens no database


def test_list_shows_each_event_and_its_state(tmp_path: Path) -> None:
    out = run(tmp_path, "send", "--list", "stripe")
    assert out.exit_code == 0
    line = next(line for line in out.output.splitlines() if line.startswith("payment_intent_succeeded"))
    assert line.split() == ["payment_intent_succeeded", "payment_intent.succeeded", "complete"]
    assert "(no state: ignored)" in out.output


def test_list_takes_an_adapter_name_without_any_configuration(tmp_path: Path) -> None:
    out = CliRunner(env={"GATEWAY_CONFIG": "", "DATABASE_URL": ""}).invoke(main, ["send", "--list", "mux"])
    assert out.exit_code == 0 and "video.asset.ready" in out.output


def test_unknown_source_and_event_say_what_exists(tmp_path: Path) -> None:
    out = run(tmp_path, "send", "strpe", "payment_intent.succeeded")
    assert out.exit_code == 1 and "did you mean 'stripe'" in out.output
    out = run(tmp_path, "send", "stripe", "payment_intent.suceeded")
    assert out.exit_code == 1 and "did you mean" in out.output and "payment_intent_succeeded" in out.output


def test_a_gateway_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    out = run(tmp_path, "send", "stripe", "payment_intent.succeeded", "--to", "http://127.0.0.1:9")
    assert out.exit_code == 1 and "no gateway answering at http://127.0.0.1:9" in out.output


def test_a_wrong_secret_is_refused_by_the_gateway(server: Server, tmp_path: Path) -> None:
    env = {**TEST_ENV, "STRIPE_SECRETS": "whsec_not_the_servers", "GATEWAY_CONFIG": str(write_config(tmp_path / "w.toml"))}
    out = CliRunner(env=env).invoke(main, ["send", "stripe", "payment_intent.succeeded", "--to", server.url])
    assert out.exit_code == 1 and "gateway answered 401" in out.output


def test_twilio_signer_matches_twilios_request_validator() -> None:
    from twilio.request_validator import RequestValidator

    for sample in samples("twilio"):
        url = "https://gw.example.com/webhooks/twilio?x=1"
        delivery = build(sample, "tok-" + sample.name, url=url)
        params = dict(parse_qsl(delivery.body.decode(), keep_blank_values=True))
        assert RequestValidator("tok-" + sample.name).validate(url, params, delivery.headers["X-Twilio-Signature"])


def test_samples_only_for_built_in_adapters_and_none_of_renders_api_answers() -> None:
    assert samples("nosuch") == []
    assert all(not s.name.startswith("api_event_") for s in samples("render"))
    assert {adapter for adapter in SOURCES.values()} == {a for a in SOURCES.values() if samples(a)}

