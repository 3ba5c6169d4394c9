"""Everything ``serve`` needs, checked before a worker starts: ``gateway check`` and ``gateway serve``
run these in the master, so a broken configuration is one clear message, never a worker traceback.

The checks, in order: the configuration file and its keys (with "did you mean"), every source's
adapter and its options, every source's secrets, the forwarding endpoints (URL, whsec_ secrets), the database reachable and migrated to the
latest revision. Nothing here creates or changes a database.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Config, Resolution, load_config
from gateway.db import make_engine, safe_url, sqlite_path
from gateway.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """One line of ``gateway check``: what was checked, whether it passed, and the detail."""

    name: str
    ok: bool
    detail: str


def run_checks(env: Mapping[str, str], resolution: Resolution) -> tuple[list[Check], Config | None]:
    """Every check in order; stops after the first failing stage (the later ones depend on it)."""
    checks: list[Check] = []
    try:
        config = load_config(env, resolution=resolution)
    except ConfigError as exc:
        return [Check("configuration", False, str(exc))], None
    checks.append(Check("configuration", True, f"{resolution.config_path or 'no file'}: {len(config.sources)} source(s), "
                        f"{len(config.endpoints)} endpoint(s)"))
    from adapters.registry import load_registry
    from gateway.services import build_sources

    try:
        sources = build_sources(config, load_registry())
    except ConfigError as exc:
        return checks + [Check("adapters", False, str(exc))], config
    checks.append(Check("adapters", True, ", ".join(f"{n}={s.config.adapter}" for n, s in sorted(sources.items())) or "no sources"))
    checks.append(Check("endpoints", True, ", ".join(f"{n}={e.public_url} ({', '.join(e.events)})"
                                                     for n, e in sorted(config.endpoints.items())) or "no endpoints"))
    problem = database_problem(config.database_url)
    checks.append(Check("database", problem is None, problem or f"{safe_url(config.database_url)} is migrated"))
    return checks, config


def database_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot serve (missing, unreachable, not migrated), or None.

    Reads only: a SQLite file that does not exist is reported, never created."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.migrate import current_revision, head_revision

    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        return f"database: no SQLite file at {path} (create it with `gateway migrate`)"
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        return explain_database_error(exc, url)
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        return (f"database: {safe_url(url)} is not migrated (at {current or 'an empty schema'}, latest is {head}): "
                "run `gateway migrate`")
    return None


def explain_database_error(exc: BaseException, url: str) -> str:
    """A database error as one line an operator can act on (no traceback, no password)."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(cause).strip()
    first = text.splitlines()[0][:200] if text else type(cause).__name__
    where = safe_url(url)
    if "does not exist" in text and "database" in text:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        return (f"database: {name!r} does not exist at {where}: create it (e.g. `createdb {name}`), "
                "then run `gateway migrate`")
    if "Connection refused" in text or "could not connect" in text or "timeout" in text.lower():
        return f"database: cannot connect to {where} ({first}); is the server running and DATABASE_URL right?"
    if "no such table" in text or "UndefinedTable" in type(cause).__name__ or "does not exist" in text:
        return f"database: {where} is not migrated ({first}): run `gateway migrate`"
    return f"database: {where}: {type(cause).__name__}: {first}"
