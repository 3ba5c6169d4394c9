"""jobs, job keys, events, deliveries and the trace

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("label", sa.Text()),
        sa.Column("queue_name", sa.String(128), nullable=False),
        sa.Column("registered_label", sa.Text()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("progress", sa.JSON()),
        sa.Column("queue", sa.JSON()),
        sa.Column("error", sa.JSON()),
        sa.Column("result", sa.JSON()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(), nullable=False),
        sa.Column("queued_since", sa.DateTime(), nullable=False),
        sa.Column("fold", sa.JSON(), nullable=False),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_queue", "jobs", ["queue_name", "state", "queued_since"])

    op.create_table(
        "job_keys",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("linked_at", sa.DateTime()),
        sa.UniqueConstraint("source", "external_id", name="uq_job_keys_source_external"),
    )
    op.create_index("ix_job_keys_job_id", "job_keys", ["job_id"])

    op.create_table(
        "events",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("external_id", sa.String(255)),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("type", sa.String(255)),
        sa.Column("state", sa.String(16)),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.JSON()),
        sa.UniqueConstraint("source", "event_id", name="uq_events_source_event"),
    )
    op.create_index("ix_events_job_id", "events", ["job_id"])
    op.create_index("ix_events_key", "events", ["source", "external_id"])

    op.create_table(
        "deliveries",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("event_id", sa.String(255)),
        sa.Column("event_type", sa.String(255)),
        sa.Column("external_id", sa.String(255)),
        sa.Column("job_id", sa.String(64)),
        sa.Column("decision", sa.String(16)),
        sa.Column("state_before", sa.String(16)),
        sa.Column("state_after", sa.String(16)),
        sa.Column("version", sa.Integer()),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("remote_addr", sa.String(64)),
        sa.Column("request_id", sa.String(64)),
    )
    op.create_index("ix_deliveries_received_at", "deliveries", ["received_at"])
    op.create_index("ix_deliveries_job_id", "deliveries", ["job_id"])
    op.create_index("ix_deliveries_key", "deliveries", ["source", "external_id"])

    op.create_table(
        "trace",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("what", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON()),
    )
    op.create_index("ix_trace_job_id", "trace", ["job_id"])


def downgrade() -> None:
    for table in ("trace", "deliveries", "events", "job_keys", "jobs"):
        op.drop_table(table)
