"""axe-core (from the npm registry, installed by `make client-deps` into tests/browser/npm)
injected into a page under test: the accessibility check the console's pages must pass.
Missing axe-core fails the test when GATEWAY_REQUIRE_BROWSER=1 (CI), else skips it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.browser.client_package import NODE_MODULES

AXE = NODE_MODULES / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")


def require_axe() -> str:
    """The path of axe.min.js, or fail (CI) / skip when `make client-deps` has not run."""
    if not AXE.exists():
        message = f"{AXE} missing: run `make client-deps` (npm ci in {NODE_MODULES.parent})"
        if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " and GATEWAY_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return str(AXE)


def violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA
    rules plus best practices), each {id, impact, help, targets}."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=require_axe())
    found = page.evaluate("() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "targets": [", ".join(map(str, n["target"])) for n in v["nodes"]][:5]}
            for v in found if v["impact"] in BLOCKING]


def assert_accessible(page: Any, what: str) -> None:
    """No serious or critical axe-core violation on ``page`` (``what`` names it in the failure)."""
    bad = violations(page)
    assert not bad, f"{what}: axe-core found serious/critical violations: {bad}"
