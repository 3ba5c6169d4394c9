"""Alembic environment: the database comes from the caller (gateway migrate) or DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context

from gateway.db import default_database_url, make_engine
from gateway.models import Base

config = context.config
url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL") or default_database_url()


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=engine.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
