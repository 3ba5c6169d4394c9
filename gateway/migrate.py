"""Schema migrations through Alembic only (the ``alembic/`` folder beside the package)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from alembic import command

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    if database_url:
        cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str) -> list[str]:
    """Bring the schema at ``database_url`` up to the latest revision; the revisions applied, oldest
    first, each as ``"<revision> <message>"`` (empty when it was already up to date)."""
    from gateway.db import make_engine

    engine = make_engine(database_url)
    try:
        before = current_revision(engine)
    finally:
        engine.dispose()
    command.upgrade(alembic_config(database_url), "head")
    script = ScriptDirectory.from_config(alembic_config())
    applied = list(script.iterate_revisions("head", before or "base"))
    return [f"{rev.revision} {rev.doc or ''}".strip() for rev in reversed(applied) if rev.revision != before]


def current_revision(engine: Engine) -> str | None:
    """The revision the database at ``engine`` is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
