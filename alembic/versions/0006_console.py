"""support console (issue 16): console sign-ins, so that sign-out ends one in every worker

Revision ID: 0006_console
Revises: 0004_hardening
Create Date: 2026-12-05
"""

import sqlalchemy as sa

from alembic import op

revision = "0006_console"
down_revision = "0004_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("console_sessions")
