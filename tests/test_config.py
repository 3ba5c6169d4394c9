"""A broken configuration stops start-up with a message that names the key."""

from __future__ import annotations

import pytest

from adapters.registry import load_registry
from gateway.app import create_app
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.services import build_sources

ENV = {"GATEWAY_SECRET_KEY": "k" * 32, "S": "whsec_abc"}


def load(tmp_path, toml: str, **env):
    path = tmp_path / "g.toml"
    path.write_text(toml)
    return load_config({**ENV, "GATEWAY_CONFIG": str(path), **env})


@pytest.mark.parametrize(
    "toml,key",
    [
        ("[gateway]\nmax_body_bytes = 'big'\n", "gateway.max_body_bytes"),
        ("[gateway]\nnope = 1\n", "gateway.nope"),
        ("[sources.s]\nsecrets_env = 'S'\n", "sources.s.adapter"),
        ("[sources.s]\nadapter = 'stripe'\n", "sources.s.secrets_env"),
        ("[sources.s]\nadapter = 'stripe'\nsecrets_env = 'MISSING'\n", "sources.s.secrets_env"),
        ("[sources.Bad]\nadapter = 'stripe'\nsecrets_env = 'S'\n", "sources.Bad"),
        ("[sources.s]\nadapter = 'stripe'\nsecrets_env = 'S'\nstall_after = 'soon'\n", "sources.s.stall_after"),
        ("[extra]\n", "extra"),
        ("not toml [", "GATEWAY_CONFIG"),
    ],
)
def test_errors_name_the_key(tmp_path, toml, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml)
    assert str(err.value).startswith(key)


def test_missing_secret_key(tmp_path):
    with pytest.raises(ConfigError, match="GATEWAY_SECRET_KEY"):
        load_config({"GATEWAY_CONFIG": ""})


def test_unknown_adapter_and_unknown_adapter_option(tmp_path):
    config = load(tmp_path, "[sources.s]\nadapter = 'nosuch'\nsecrets_env = 'S'\n")
    with pytest.raises(ConfigError, match=r"^sources\.s\.adapter: adapter 'nosuch' not installed"):
        build_sources(config, load_registry())
    config = load(tmp_path, "[sources.s]\nadapter = 'stripe'\nsecrets_env = 'S'\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match=r"^sources\.s\.colour"):
        create_app(config, background=False)


def test_secrets_are_split_for_rotation_and_never_in_repr(tmp_path):
    config = load(tmp_path, "[sources.s]\nadapter = 'stripe'\nsecrets_env = 'S'\n", S="whsec_a, whsec_b")
    assert config.sources["s"].secrets == ("whsec_a", "whsec_b")
    assert "whsec" not in repr(config) and "k" * 32 not in repr(config)


def test_the_shipped_example_and_demo_configs_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**ENV, "STRIPE_WEBHOOK_SECRETS": "whsec_x", "WORKER_WEBHOOK_SECRETS": "whsec_eA==", "DEMO_WEBHOOK_SECRETS": "whsec_eA==",
           "DEMO_STRIPE_WEBHOOK_SECRETS": "whsec_x"}
    for name in ("example.toml", "demo.toml"):
        config = load_config({**env, "GATEWAY_CONFIG": str(root / "config" / name)})
        build_sources(config, load_registry())
