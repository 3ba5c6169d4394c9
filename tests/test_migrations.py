"""The Alembic migrations and the models describe the same schema, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.db import make_engine
from gateway.models import POSTGRES_SEARCH_INDEXES, Base


def _not_postgres_only(name: Any, kind: str, parent: Any) -> bool:
    # checked by tests/test_search_indexes.py instead: the metadata has no SQLite counterpart
    return not (kind == "index" and name in POSTGRES_SEARCH_INDEXES)


def test_migrated_schema_matches_models(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False, "include_name": _not_postgres_only})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []
