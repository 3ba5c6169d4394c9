"""Forwarding endpoints (CONTRACT §9) are checked at start-up like sources: every problem names
its key, and neither a secret nor credentials in the URL are ever shown."""

from __future__ import annotations

import pytest

from gateway.check import run_checks
from gateway.config import load_config, resolve
from gateway.errors import ConfigError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {"GATEWAY_SECRET_KEY": "k" * 32, "S": "whsec_abc", "E": f"{SECRET},whsec_c2Vjb25k"}
SOURCE = "[sources.stripe]\nadapter = 'stripe'\nsecrets_env = 'S'\n"


def load(tmp_path, toml: str, **env):
    path = tmp_path / "g.toml"
    path.write_text(SOURCE + toml)
    return load_config({**ENV, "GATEWAY_CONFIG": str(path), **env})


def test_an_endpoint_with_defaults_and_rotation(tmp_path):
    config = load(tmp_path, "[endpoints.backend]\nurl = 'https://user:pw@app.example.com/hooks?token=t'\nsecret_env = 'E'\n")
    endpoint = config.endpoints["backend"]
    assert endpoint.secrets == (SECRET, "whsec_c2Vjb25k")  # the first signs
    assert endpoint.events == ("job.*",) and endpoint.sources is None
    assert endpoint.public_url == "https://app.example.com/hooks"
    for shown in (repr(endpoint), repr(config)):
        assert "pw" not in shown and "token=t" not in shown and SECRET not in shown
    assert endpoint.wants("job.complete", "stripe") and not endpoint.wants("delivery.stripe", "stripe")


def test_events_and_sources_select_messages(tmp_path):
    config = load(tmp_path, "[endpoints.b]\nurl = 'http://127.0.0.1:9/x'\nsecret_env = 'E'\n"
                            "events = ['job.complete', 'delivery.stripe']\nsources = ['stripe']\n")
    endpoint = config.endpoints["b"]
    assert endpoint.wants("delivery.stripe", "stripe") and endpoint.wants("job.complete", "stripe")
    assert not endpoint.wants("job.progress", "stripe") and not endpoint.wants("job.complete", "other")


@pytest.mark.parametrize(
    "toml,key",
    [
        ("[endpoints.b]\nsecret_env = 'E'\n", "endpoints.b.url"),
        ("[endpoints.b]\nurl = 'ftp://x/y'\nsecret_env = 'E'\n", "endpoints.b.url"),
        ("[endpoints.b]\nurl = 'http://x/y'\n", "endpoints.b.secret_env"),
        ("[endpoints.b]\nurl = 'http://x/y'\nsecret_env = 'MISSING'\n", "endpoints.b.secret_env"),
        ("[endpoints.b]\nurl = 'http://x/y'\nsecret_env = 'S2'\n", "endpoints.b.secret_env"),
        ("[endpoints.b]\nurl = 'http://x/y'\nsecret_env = 'E'\nevents = ['order.*']\n", "endpoints.b.events"),
        ("[endpoints.b]\nurl = 'http://x/y'\nsecret_env = 'E'\nsources = ['strpe']\n", "endpoints.b.sources"),
        ("[endpoints.b]\nurl = 'http://x/y'\nsecret_env = 'E'\nsecrets_env = 'E'\n", "endpoints.b.secrets_env"),
        ("[endpoints.Bad]\nurl = 'http://x/y'\nsecret_env = 'E'\n", "endpoints.Bad"),
        ("[endpoints]\nb = 1\n", "endpoints.b"),
    ],
)
def test_errors_name_the_key(tmp_path, toml, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml, S2="not-a-whsec-secret")
    assert str(err.value).startswith(key + ":")
    assert "not-a-whsec-secret" not in str(err.value)


def test_check_lists_endpoints_without_credentials(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(SOURCE + "[endpoints.backend]\nurl = 'https://u:secretpw@app.example.com/h'\nsecret_env = 'E'\n")
    env = {**ENV, "GATEWAY_CONFIG": str(path), "DATABASE_URL": f"sqlite:///{tmp_path}/none.db"}
    checks, _ = run_checks(env, resolve(env))
    line = next(c for c in checks if c.name == "endpoints")
    assert line.ok and "backend=https://app.example.com/h" in line.detail
    assert all("secretpw" not in c.detail and SECRET not in c.detail for c in checks)
