"""forwarding (issue 15): endpoint_states, so a 410 Gone disables an endpoint in every process

Revision ID: 0008_endpoints
Revises: 0007_search
Create Date: 2026-12-05
"""

import sqlalchemy as sa

from alembic import op

revision = "0008_endpoints"
down_revision = "0007_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint_states",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_by", sa.String(64), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("endpoint_states")
