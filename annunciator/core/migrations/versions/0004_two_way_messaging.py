"""ack codes on events; messages, opt-outs and PIN sessions for two-way messaging

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarm_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ack_code", sa.Integer(), nullable=True))

    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("account", sa.String(length=200), nullable=True),
        sa.Column("pool", sa.String(length=200), nullable=True),
        sa.Column("our_number", sa.String(length=40), nullable=True),
        sa.Column("their_number", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("event_ids", sa.JSON(), nullable=True),
        sa.Column("notification_id", sa.String(length=32), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider_id"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_our_number"), ["our_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_their_number"), ["their_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_username"), ["username"], unique=False)

    op.create_table(
        "opt_outs",
        sa.Column("id", sa.String(length=250), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("opt_outs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opt_outs_number"), ["number"], unique=False)
    op.create_table(
        "pin_sessions",
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username"),
    )


def downgrade() -> None:
    op.drop_table("pin_sessions")
    op.drop_table("opt_outs")
    op.drop_table("messages")
    with op.batch_alter_table("alarm_events", schema=None) as batch_op:
        batch_op.drop_column("ack_code")
