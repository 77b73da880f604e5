"""How far the log goes into a SQLite database's inbox (``geopin.audit.inbox``).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_inbox_marks",
        sa.Column("inbox", sa.String(), primary_key=True),
        sa.Column("sequenced_through", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_inbox_marks")
