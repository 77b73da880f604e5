"""Objects upstreams made: the object each outcome record concerns (``audit_records.object``,
indexed), and where each one lives, shared by every router of the database
(``object_homes``, ``geopin.proxy.object_table``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_records", sa.Column("object", sa.String()))
    # Most records name no object: only those that do are indexed.
    named = sa.text("object IS NOT NULL")
    op.create_index(
        "ix_audit_records_object",
        "audit_records",
        ["object"],
        sqlite_where=named,
        postgresql_where=named,
    )
    op.create_table(
        "object_homes",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("object_id", sa.String(), primary_key=True),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("made_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_object_homes_made_at", "object_homes", ["made_at"])


def downgrade() -> None:
    op.drop_index("ix_object_homes_made_at", table_name="object_homes")
    op.drop_table("object_homes")
    op.drop_index("ix_audit_records_object", table_name="audit_records")
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("object")
