"""Several gateways on one database: the cluster lease, the nodes, shared secrets, console
revocations, and the constraints that are the last line of defence against a split brain

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _dedupe_open_events() -> None:
    """Before the unique indexes: a database written by two gateways at once (the defect this
    revision closes) may hold two open events of one source, or two open events with one ack code.
    The older duplicate is cleared (and journaled); a duplicate ack code is renumbered."""
    conn = op.get_bind()
    ev = sa.table("alarm_events", sa.column("id"), sa.column("source"), sa.column("clear_time"),
                  sa.column("active_time"), sa.column("ack_code"), sa.column("done"))
    journal = sa.table("journal", sa.column("event_id"), sa.column("source"), sa.column("ts"),
                       sa.column("action"), sa.column("user"), sa.column("notes"))
    now = datetime.now(UTC)
    rows = conn.execute(sa.select(ev.c.id, ev.c.source).where(ev.c.clear_time.is_(None))
                        .order_by(ev.c.source, ev.c.active_time.desc())).all()
    seen: set[str] = set()
    for event_id, source in rows:
        if source in seen:
            conn.execute(ev.update().where(ev.c.id == event_id).values(clear_time=now))
            conn.execute(journal.insert().values(
                event_id=event_id, source=source, ts=now, action="cleared", user="system",
                notes="cleared by the upgrade: a newer open event of the same source exists"))
        seen.add(source)
    top = conn.execute(sa.select(sa.func.max(ev.c.ack_code))).scalar() or 0
    codes: set[int] = set()
    for event_id, code in conn.execute(sa.select(ev.c.id, ev.c.ack_code).where(
            ev.c.done.is_(False), ev.c.ack_code.isnot(None)).order_by(ev.c.active_time)).all():
        if code in codes:
            top += 1
            conn.execute(ev.update().where(ev.c.id == event_id).values(ack_code=top))
            code = top
        codes.add(code)


def upgrade() -> None:
    op.create_table(
        "cluster_lease",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(64)),
        sa.Column("holder_name", sa.String(200)),
        sa.Column("address", sa.String(500)),
        sa.Column("renewed", sa.DateTime(timezone=True)),
        sa.Column("lease", sa.Float, nullable=False),
    )
    op.create_table(
        "cluster_nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("public_url", sa.String(500), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("identity", sa.String(300)),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("epoch", sa.BigInteger),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_cluster_nodes_heartbeat", "cluster_nodes", ["heartbeat"])
    op.create_table(
        "shared_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "console_revocations",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_console_revocations_until", "console_revocations", ["until"])
    _dedupe_open_events()
    clear_null = sa.text("clear_time IS NULL")
    op.create_index("uq_open_event_per_source", "alarm_events", ["source"], unique=True,
                    sqlite_where=clear_null, postgresql_where=clear_null)
    open_code = sa.text("done = false AND ack_code IS NOT NULL")
    op.create_index("uq_open_ack_code", "alarm_events", ["ack_code"], unique=True,
                    sqlite_where=sa.text("done = 0 AND ack_code IS NOT NULL"), postgresql_where=open_code)


def downgrade() -> None:
    op.drop_index("uq_open_ack_code", "alarm_events")
    op.drop_index("uq_open_event_per_source", "alarm_events")
    op.drop_table("console_revocations")
    op.drop_table("shared_secrets")
    op.drop_table("cluster_nodes")
    op.drop_table("cluster_lease")
