"""console search at scale (issue 16): indexes for the ids a ticket carries; pg_trgm on PostgreSQL

Revision ID: 0007_search
Revises: 0006_console
Create Date: 2026-12-05
"""

import sqlalchemy as sa

from alembic import op

revision = "0007_search"
down_revision = "0006_console"
branch_labels = None
depends_on = None

# Equality indexes for the ids a ticket carries, on both databases; on PostgreSQL also pg_trgm GIN
# indexes that serve ``ILIKE '%text%'`` on a job's external id and label, and a pattern index for
# job id prefixes (the database collation need not be C). SQLite scans for substrings.

#: (index, table, column) looked up by equality: on both databases, and in gateway.models
EQUALITY = (
    ("ix_jobs_external_id", "jobs", "external_id"),
    ("ix_job_keys_external_id", "job_keys", "external_id"),
    ("ix_events_event_id", "events", "event_id"),
    ("ix_deliveries_request_id", "deliveries", "request_id"),
)
#: PostgreSQL only (gateway.models.POSTGRES_SEARCH_INDEXES): (index, table, column, operator class, method)
POSTGRES = (
    ("ix_jobs_external_id_trgm", "jobs", "external_id", "gin_trgm_ops", "gin"),
    ("ix_jobs_label_trgm", "jobs", "label", "gin_trgm_ops", "gin"),
    ("ix_jobs_id_prefix", "jobs", "id", "varchar_pattern_ops", "btree"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name, table, column in EQUALITY:
            op.create_index(name, table, [column])
        return
    # built CONCURRENTLY, outside the migration's transaction: webhooks keep landing in the
    # tables meanwhile (a million deliveries take seconds to index)
    with op.get_context().autocommit_block():
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, table, column in EQUALITY:
            op.create_index(name, table, [column], postgresql_concurrently=True)
        for name, table, column, ops, method in POSTGRES:
            op.create_index(name, table, [sa.text(f"{column} {ops}")], postgresql_using=method, postgresql_concurrently=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, *_ in POSTGRES:
            op.drop_index(name, table_name=table)
    for name, table, _ in EQUALITY:
        op.drop_index(name, table_name=table)
