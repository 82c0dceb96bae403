"""PIN expiry: when a person's PIN expires, and which expiry they were reminded of

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pin_expires", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("pin_reminded", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("pin_reminded")
        batch_op.drop_column("pin_expires")
