"""on-call overrides, audit log, and notification batching / fallback / attempt columns

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_key", sa.String(length=600), nullable=True))
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("chain_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("chain", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("attempt_log", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("delivery_status", sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f("ix_notifications_batch_key"), ["batch_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_chain_id"), ["chain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_provider_id"), ["provider_id"], unique=False)

    op.create_table(
        "oncall_overrides",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("roster", sa.String(length=200), nullable=True),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("covers", sa.String(length=200), nullable=True),
        sa.Column("starts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("oncall_overrides", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oncall_overrides_ends"), ["ends"], unique=False)

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("code", sa.String(length=60), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("channel", sa.String(length=200), nullable=True),
        sa.Column("contact", sa.String(length=500), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("event_ids", sa.JSON(), nullable=True),
        sa.Column("notification_id", sa.String(length=32), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_code"), ["code"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_notification_id"), ["notification_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_ts"), ["ts"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_username"), ["username"], unique=False)


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("oncall_overrides")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_provider_id"))
        batch_op.drop_index(batch_op.f("ix_notifications_chain_id"))
        batch_op.drop_index(batch_op.f("ix_notifications_batch_key"))
        for col in ("delivery_status", "attempt_log", "chain", "chain_id", "due_at", "batch_key"):
            batch_op.drop_column(col)
