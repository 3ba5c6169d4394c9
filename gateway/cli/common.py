"""What every ``gateway`` command shares: where the configuration and database are (the
server's order, gateway.config.resolve), a store on it, one-line database errors, and output as
aligned tables or JSON."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Config, Resolution
    from gateway.store import Store


def _flags(ctx: click.Context | None = None) -> dict[str, Any]:
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return (root.obj if root is not None and isinstance(root.obj, dict) else None) or {}


def _resolution(ctx: click.Context | None = None) -> Resolution:
    """Where this command finds its configuration and database: the server's order (gateway.config.resolve)."""
    from gateway.config import resolve

    flags = _flags(ctx)
    return resolve(config_flag=flags.get("config"), database_flag=flags.get("database_url"))


def _config(strict: bool = True) -> Config:
    from gateway.config import load_config

    try:
        return load_config(strict=strict, resolution=_resolution())
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _store() -> Store:
    """A store on the configured database (secrets not required). Only `migrate` creates a
    database: a SQLite file that is not there is an error naming where it was looked for."""
    from gateway.db import make_engine, sqlite_path
    from gateway.store import Store

    url = _config(strict=False).database_url
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise click.ClickException(f"no database at {path}: nothing to read (`gateway migrate` creates it, "
                                   "or point DATABASE_URL / --database-url at the server's)")
    return Store(make_engine(url))


def _database_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """A database that is down, missing or not migrated is a one-line message, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from gateway.check import explain_database_error

        try:
            fn(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise click.ClickException(explain_database_error(exc, _config(strict=False).database_url)) from None

    return wrapper


class _Main(click.Group):
    """Every error (not a usage error) ends with where the configuration and database were found."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError:
            raise
        except click.ClickException as exc:
            raise click.ClickException(f"{exc.message}\n({_resolution(ctx).describe()})") from None


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


_SINCE = re.compile(r"^(\d+)([smhd])$")


def _since(value: str | None) -> datetime | None:
    """``--since``: a duration back from now (30m, 6h, 2d), or None when not given."""
    if not value:
        return None
    m = _SINCE.match(value.strip())
    if not m:
        raise click.BadParameter("a duration like 30m, 6h or 2d", param_hint="--since")
    from gateway.ids import utcnow

    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return utcnow() - timedelta(**{unit: int(m.group(1))})
