"""The audit log: pending records, sequenced records, rules, Merkle nodes, checkpoints.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("record_id", name="uq_audit_pending_record_id"),
    )
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("record_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String()),
        sa.Column("country", sa.String()),
        sa.Column("subdivision", sa.String()),
        sa.Column("model", sa.String()),
        sa.Column("endpoint", sa.String()),
        sa.Column("processing_country", sa.String()),
        sa.Column("action", sa.String()),
        sa.Column("policy_version", sa.String()),
        sa.Column("decision_id", sa.String()),
        sa.Column("body", sa.LargeBinary),
        sa.UniqueConstraint("record_id", name="uq_audit_records_record_id"),
    )
    for name, columns in (
        ("ix_audit_records_ts", ["ts"]),
        ("ix_audit_records_country_ts", ["country", "ts"]),
        ("ix_audit_records_processing_country_ts", ["processing_country", "ts"]),
        ("ix_audit_records_tenant_ts", ["tenant", "ts"]),
        ("ix_audit_records_model_ts", ["model", "ts"]),
        ("ix_audit_records_endpoint_ts", ["endpoint", "ts"]),
        ("ix_audit_records_decision_id", ["decision_id"]),
    ):
        op.create_index(name, "audit_records", columns)
    op.create_table(
        "audit_record_rules",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("rule_id", sa.String(), primary_key=True),
    )
    op.create_index("ix_audit_record_rules_rule_seq", "audit_record_rules", ["rule_id", "seq"])
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "audit_checkpoints",
        "audit_nodes",
        "audit_record_rules",
        "audit_records",
        "audit_pending",
    ):
        op.drop_table(table)
