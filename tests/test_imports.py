"""No import circle among the modules of ``gateway/`` and ``adapters/``.

Every ``import`` and ``from ... import`` anywhere in a module counts (inside functions and
``if TYPE_CHECKING:`` blocks too), because a circle hidden in a function is still one: the two
modules cannot be understood, tested or moved apart. An import names the module it loads:
``from gateway import api`` is an edge to ``gateway.api``, ``from gateway.relay import Relay`` an
edge to the package ``gateway.relay`` (its ``__init__``), relative imports are resolved against
the importing module's package. Importing a submodule first runs its parent packages'
``__init__``, so ``import gateway.relay.hub`` is an edge to ``gateway.relay`` too, except from a
module inside that package (whose ``__init__`` has always started before it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters")


def modules() -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that ``import name`` loads: the longest known prefix, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _with_parents(target: str, importer: str, known: dict[str, Path]) -> set[str]:
    """``target`` and the packages above it whose ``__init__`` importing it runs: all but the
    importer's own packages, which were started before the importer."""
    found = {target}
    parts = target.split(".")[:-1]
    while parts:
        package = ".".join(parts)
        if package in known and not (importer + ".").startswith(package + "."):
            found.add(package)
        parts.pop()
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that ``module`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := _resolve(alias.name, known)) is not None:
                    targets |= _with_parents(target, module, known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import sub`` loads the submodule; ``from mod import name`` the module
                target = _resolve(f"{base}.{alias.name}", known) if f"{base}.{alias.name}" in known else _resolve(base, known)
                if target is not None:
                    targets |= _with_parents(target, module, known)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (as a path that returns to its start) for each strongly connected group of
    modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle_in(graph, group) for group in groups]


def _circle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, through the group only."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle in a strongly connected group {sorted(group)}")


def test_the_walk_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    assert "gateway.app" in graph and "adapters" in graph and "gateway.relay" in graph
    assert "gateway.relay.bus_pg" in graph["gateway.relay.relay"]  # imported inside make_bus
    assert "gateway.relay" in graph["gateway.context"]  # the package runs before gateway.relay.relay
    assert "gateway.relay" not in graph["gateway.relay.sse"]  # its own package: already running
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_imports_the_factory() -> None:
    importers = sorted(name for name, targets in import_graph().items() if "gateway.app" in targets and name != "gateway.cli")
    assert importers == [], f"modules importing gateway.app (only wsgi.py, the CLI and tests may): {importers}"


def test_no_import_circle() -> None:
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join("  " + " -> ".join(circle) for circle in found)
