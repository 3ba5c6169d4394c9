"""Apps and servers with sources of their own (callback URLs, stall_after, test adapters)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import requests

from tests.conftest import API_KEY, TEST_ENV, write_config
from tests.signing import standard_body, standard_headers


def config_file(tmp_path: Path, extra_sources: str = "", extra_gateway: str = "") -> Path:
    return write_config(tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.toml", extra_gateway=extra_gateway, extra_sources=extra_sources)


def make_app(db_url: str, tmp_path: Path, extra_sources: str = "", extra_gateway: str = "", **env: str) -> Any:
    """An app (no background threads: tests drive the outbox and watchdog by hand)."""
    from gateway.app import create_app
    from gateway.config import load_config

    path = config_file(tmp_path, extra_sources, extra_gateway)
    config = load_config({**TEST_ENV, "GATEWAY_CONFIG": str(path), "DATABASE_URL": db_url, **env})
    return create_app(config, background=False)


def gw_of(app: Any) -> Any:
    return app.extensions["gateway"]


def post_standard(target: Any, source: str, secret: str, external_id: str, state: str, **fields: Any) -> Any:
    """A Standard Webhooks–signed canonical event, to a test client or a base URL."""
    body = standard_body(external_id, state, **fields)
    headers = standard_headers(secret, body)
    if isinstance(target, str):
        return requests.post(f"{target}/webhooks/{source}", data=body, headers=headers, timeout=10)
    return target.post(f"/webhooks/{source}", data=body, headers=headers)


def api(auth_key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth_key}"}
