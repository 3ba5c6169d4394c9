"""docs/openapi.yaml against the real routes: schemathesis drives a real gunicorn server with
valid and invalid requests generated from the description, and checks every answer against it
(status codes, content types, headers, bodies), plus: never a 5xx, auth never ignored, every
error in the contract's JSON shape. ``TRUST_FUZZ_EXAMPLES`` raises the count (``make fuzz``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from tests.conftest import API_KEY, ARTIFACTS, server_env, write_config
from tests.servers import Server

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("TRUST_FUZZ_EXAMPLES", "60"))
SEEN: dict[str, int] = {"cases": 0, "5xx": 0}
SESSION = requests.Session()  # keep-alive: thousands of cases must not use up the loopback's ports


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def openapi_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real gunicorn on each backend (PostgreSQL refuses values SQLite stores, e.g. NUL)."""
    db_url = request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param])
    d = tmp_path_factory.mktemp("openapi")
    # limits off: the fuzzer's own rate must not turn its cases into 429s
    cfg = write_config(d / "gateway.toml", extra_gateway="rate_limit_webhooks_per_source = 0\nrate_limit_webhooks_per_address = 0\nrate_limit_public_per_address = 0")
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(db_url, cfg), log_path=ARTIFACTS / f"openapi-{request.param}.log").start()
    yield srv
    srv.stop()
    print(f"schemathesis: {SEEN['cases']} cases, {SEEN['5xx']} server errors")


# the SSE stream never ends for a valid token: its shape is tested in the relay's own tests
schema = schemathesis.openapi.from_path(SPEC).exclude(path="/api/jobs/{id}/stream")


def test_the_description_is_valid_openapi_3_1() -> None:
    import yaml

    schemathesis.openapi.from_path(SPEC).validate()  # against the OpenAPI 3.1 meta-schema
    doc = yaml.safe_load(SPEC.read_text())
    assert doc["openapi"].startswith("3.1")
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    from gateway.app import create_app
    from tests.conftest import make_config

    app = create_app(make_config("sqlite://", Path(os.environ.get("TMPDIR", "/tmp"))), background=False)
    routes = {(r.rule.replace("<source_name>", "{source}").replace("<job_id>", "{id}").replace("<message_id>", "{id}").replace("<delivery_id>", "{id}").replace("<name>", "{name}"), m)
              for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"} if r.endpoint != "static"}
    pages = ("/demo/", "/console/")  # HTML pages for people, not the API: docs/console.md
    undocumented = {r for r in routes if r not in documented and r[0] not in ("/", "/ws", "/favicon.ico") and not r[0].startswith(pages)}
    assert undocumented == set(), f"routes missing from docs/openapi.yaml: {sorted(undocumented)}"
    assert documented - routes <= {("/api/jobs/{id}/stream", "GET")}, sorted(documented - routes)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_description(case: Any, openapi_server: Server) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"} if case.operation.path.startswith("/api/") else None
    response = case.call(base_url=openapi_server.url, headers=headers, timeout=15, session=SESSION)
    SEEN["cases"] += 1
    if response.status_code >= 500 and response.status_code != 503:
        SEEN["5xx"] += 1
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str)
    case.validate_response(response, excluded_checks=[st_checks.positive_data_acceptance])
