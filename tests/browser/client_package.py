"""The browser client as an npm package: packed with `npm pack`, installed into a scratch app
with npm, bundled with esbuild, type-checked with tsc (tooling from tests/browser/npm, installed
by `make client-deps`). Missing tooling fails the tests when GATEWAY_REQUIRE_BROWSER=1 (CI),
else skips them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import ROOT

PACKAGE_DIR = ROOT / "gateway" / "static"
TOOLING = ROOT / "tests" / "browser" / "npm"
NODE_MODULES = TOOLING / "node_modules"


def require_tooling() -> Path:
    """The tooling's node_modules, or fail (CI) / skip when `make client-deps` has not run."""
    missing = [tool for tool in ("esbuild", "tsc") if not (NODE_MODULES / ".bin" / tool).exists()]
    if shutil.which("npm") is None:
        missing.append("npm")
    if missing:
        message = f"{', '.join(missing)} missing: run `make client-deps` (npm ci in {TOOLING})"
        if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " and GATEWAY_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return NODE_MODULES


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class PackedApp:
    """A scratch app that installed the packed tarball from npm, with the test tooling beside it."""

    root: Path
    tarball: Path
    files: dict[str, int]  # path in the tarball → size in bytes

    @property
    def installed(self) -> Path:
        return self.root / "node_modules" / "@job-gateway" / "client"

    def esbuild(self, entry: str, out: str, *extra: str) -> Path:
        """Bundle ``entry`` (relative to tests/browser/npm) for the browser; the output file."""
        target = self.root / out
        run([str(NODE_MODULES / ".bin" / "esbuild"), str(self.root / entry), "--bundle", "--format=esm",
             "--jsx=automatic", f"--outfile={target}", *extra], cwd=self.root)
        return target

    def tsc(self, project: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(NODE_MODULES / ".bin" / "tsc"), "-p", str(self.root / project)],
                              cwd=self.root, capture_output=True, text=True, timeout=180)


def pack_and_install(scratch: Path) -> PackedApp:
    """`npm pack` gateway/static, `npm install` the tarball into a scratch app (offline: the
    package has no dependencies), and link the test tooling (React, Vue, types) beside it."""
    require_tooling()
    out = json.loads(run(["npm", "pack", "--json", "--pack-destination", str(scratch), str(PACKAGE_DIR)], cwd=TOOLING))
    tarball = scratch / out[0]["filename"]
    files = {f["path"]: f["size"] for f in out[0]["files"]}
    app = scratch / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "scratch-app", "private": True}))
    run(["npm", "install", "--offline", "--no-audit", "--no-fund", "--no-package-lock", str(tarball)], cwd=app)
    for entry in NODE_MODULES.iterdir():
        if entry.name not in ("@job-gateway", ".package-lock.json") and not (app / "node_modules" / entry.name).exists():
            (app / "node_modules" / entry.name).symlink_to(entry)
    for sub in ("app", "typed"):
        shutil.copytree(TOOLING / sub, app / sub)
    return PackedApp(app, tarball, files)
