"""replay (CONTRACT §10): verified deliveries keep their raw body and request headers

Revision ID: 0010_replay
Revises: 0008_endpoints
Create Date: 2026-12-05
"""

import sqlalchemy as sa

from alembic import op

revision = "0010_replay"
down_revision = "0008_endpoints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("body", sa.LargeBinary(), nullable=True))
    op.add_column("deliveries", sa.Column("headers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("headers")
        batch.drop_column("body")
