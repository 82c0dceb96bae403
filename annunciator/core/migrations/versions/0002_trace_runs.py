"""trace lines stored one row per run

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    trace_runs = op.create_table(
        "trace_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("trace_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trace_runs_event_id"), ["event_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_trace_runs_instance_id"), ["instance_id"], unique=False)

    # keep every existing line: each old row becomes a run of one line
    conn = op.get_bind()
    old = sa.table("traces", sa.column("id", sa.Integer), sa.column("instance_id", sa.String),
                   sa.column("event_id", sa.String), sa.column("ts", sa.DateTime(timezone=True)),
                   sa.column("branch", sa.Integer), sa.column("block", sa.String),
                   sa.column("action", sa.String), sa.column("why", sa.Text))
    rows = [{"instance_id": r.instance_id, "event_id": r.event_id, "ts": r.ts,
             "lines": [[r.ts.isoformat(), r.branch, r.block, r.action, r.why]]}
            for r in conn.execute(sa.select(old).order_by(old.c.id))]
    if rows:
        op.bulk_insert(trace_runs, rows)

    with op.batch_alter_table("traces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_traces_instance_id"))
        batch_op.drop_index(batch_op.f("ix_traces_event_id"))
    op.drop_table("traces")


def downgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("branch", sa.Integer(), nullable=False),
        sa.Column("block", sa.String(length=200), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("traces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_traces_event_id"), ["event_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_traces_instance_id"), ["instance_id"], unique=False)
    op.drop_table("trace_runs")
