"""hardening (issue 13): events of providers whose event id is unsigned dedup on a digest too;
a job keeps the queue it was registered in apart from the queue it counts in now

Revision ID: 0004_hardening
Revises: 0003
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_hardening"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("digest", sa.String(64), nullable=True))
    # NULLs never collide: only events given a digest are deduplicated on it
    op.create_index("uq_events_source_digest", "events", ["source", "digest"], unique=True)
    op.add_column("jobs", sa.Column("registered_queue", sa.String(128), nullable=True))
    op.execute("UPDATE jobs SET registered_queue = queue_name")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("registered_queue")
    op.drop_index("uq_events_source_digest", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("digest")
