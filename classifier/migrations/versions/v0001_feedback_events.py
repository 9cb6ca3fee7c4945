"""The feedback events table: agents' labels for tickets, with idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("new_label", sa.Boolean(), nullable=False),
        sa.Column("text_fields", sa.JSON(), nullable=True),
        sa.Column("predicted_label", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("needs_review", sa.Boolean(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_events"),
        sa.UniqueConstraint("idempotency_key", name="uq_feedback_events_idempotency_key"),
    )
    op.create_index("ix_feedback_events_ticket_id_occurred_at_id", "feedback_events",
                    ["ticket_id", "occurred_at", "id"])
    op.create_index("ix_feedback_events_received_at", "feedback_events", ["received_at"])


def downgrade() -> None:
    op.drop_table("feedback_events")
