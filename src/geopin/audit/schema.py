"""The audit log's tables. Schema changes go through the migrations in ``audit/migrations``.

``audit_pending`` takes records from every writer; the sequencer moves them, in pending order,
into ``audit_records`` (one row per sequenced record, never updated except by a recorded prune),
``audit_record_rules`` and ``audit_nodes`` (the complete Merkle subtrees, level 0 = leaf hashes),
and signs ``audit_checkpoints``. On SQLite the writers' records wait in a file of their own
instead, the inbox (``geopin.audit.inbox``); ``audit_inbox_marks`` says how far into it the log
goes. Flat columns duplicate fields of the hashed body for indexed
queries; verification checks they agree with the body.

One table is not part of the trail: ``object_homes``, where the objects upstreams made live,
which every router of the database reads and writes (``geopin.proxy.object_table``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from geopin.audit.records import FLAT_KEYS

metadata = MetaData()

# Alembic's own version table, named so it cannot collide with another application's Alembic
# history in a shared database.
VERSION_TABLE = "geopin_audit_version"

# SQLite's INTEGER PRIMARY KEY is its rowid alias only when declared exactly INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

pending = Table(
    "audit_pending",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("record_id", String(), nullable=False),
    Column("body", LargeBinary, nullable=False),  # canonical JSON, exactly as hashed
    UniqueConstraint("record_id", name="uq_audit_pending_record_id"),
)

# Fields copied out of the body into indexed columns (column name = record key).
FLAT_FIELDS: tuple[str, ...] = ("kind", "ts", *FLAT_KEYS)

records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("record_id", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("ts", String(32), nullable=False),  # RFC 3339 UTC with microseconds: sorts as text
    Column("tenant", String()),
    Column("country", String()),
    Column("subdivision", String()),
    Column("model", String()),
    Column("endpoint", String()),
    Column("processing_country", String()),
    Column("action", String()),
    Column("policy_version", String()),
    Column("decision_id", String()),
    Column("object", String()),
    Column("body", LargeBinary),  # NULL once pruned; the leaf hash stays in audit_nodes
    UniqueConstraint("record_id", name="uq_audit_records_record_id"),
    Index("ix_audit_records_ts", "ts"),
    Index("ix_audit_records_country_ts", "country", "ts"),
    Index("ix_audit_records_processing_country_ts", "processing_country", "ts"),
    Index("ix_audit_records_tenant_ts", "tenant", "ts"),
    Index("ix_audit_records_model_ts", "model", "ts"),
    Index("ix_audit_records_endpoint_ts", "endpoint", "ts"),
    Index("ix_audit_records_decision_id", "decision_id"),
    Index(  # most records name no object: only those that do are indexed
        "ix_audit_records_object",
        "object",
        sqlite_where=text("object IS NOT NULL"),
        postgresql_where=text("object IS NOT NULL"),
    ),
)

record_rules = Table(
    "audit_record_rules",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("rule_id", String(), primary_key=True),
    Index("ix_audit_record_rules_rule_seq", "rule_id", "seq"),
)

nodes = Table(
    "audit_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),  # the signed note, verifiable without the database
    Column("created_at", String(32), nullable=False),
)

# On SQLite: per inbox (its random identity), the highest inbox id the log holds; updated in the
# transaction that appends the records (``geopin.audit.inbox``).
inbox_marks = Table(
    "audit_inbox_marks",
    metadata,
    Column("inbox", String(), primary_key=True),
    Column("sequenced_through", BigInteger, nullable=False),
)

# Not part of the trail: (tenant, object id) -> the endpoint that made and keeps the object, for
# every router of the database; rows older than ``objects.retention_days`` are deleted.
object_homes = Table(
    "object_homes",
    metadata,
    Column("tenant", String(), primary_key=True),  # "" for anonymous clients
    Column("object_id", String(), primary_key=True),
    Column("endpoint", String(), nullable=False),
    Column("made_at", BigInteger, nullable=False),  # Unix seconds
    Index("ix_object_homes_made_at", "made_at"),
)
