"""Reading and writing the audit tables: the SQL the writer, sequencer, verifier and queries share.

Functions here take an open ``Connection`` (so callers choose the transaction); ``AuditStore``
bundles an engine with the read operations the CLI and the HTTP API need.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from geopin.audit import journal, merkle
from geopin.audit.db import create_audit_engine, redact, translate_errors
from geopin.audit.inbox import waiting
from geopin.audit.schema import checkpoints, nodes, pending, records
from geopin.errors import AuditError

_IN_CHUNK = 900  # parameters per IN list, well under SQLite's limit


def insert_pending(conn: Connection, rows: Sequence[tuple[str, bytes]]) -> None:
    """Insert (record_id, canonical body) rows; a record id already pending is left alone, so
    replaying a spool twice cannot duplicate a record."""
    if not rows:
        return
    insert = (
        pg_dialect.insert(pending)
        if conn.dialect.name == "postgresql"
        else sqlite_dialect.insert(pending)
    )
    statement = insert.on_conflict_do_nothing(index_elements=["record_id"])
    conn.execute(statement, [{"record_id": rid, "body": body} for rid, body in rows])


def chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tree_size(conn: Connection) -> int:
    """The number of sequenced leaves: one more than the highest stored leaf index."""
    top = conn.scalar(sa.select(sa.func.max(nodes.c.idx)).where(nodes.c.level == 0))
    return 0 if top is None else int(top) + 1


def fetch_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Stored node hashes for ``(level, index)`` keys, in as few queries as the levels need."""
    by_level: dict[int, list[int]] = {}
    for level, index in keys:
        by_level.setdefault(level, []).append(index)
    found: dict[tuple[int, int], bytes] = {}
    for level, indexes in by_level.items():
        for part in chunks(sorted(set(indexes))):
            query = sa.select(nodes.c.idx, nodes.c.hash).where(
                nodes.c.level == level, nodes.c.idx.in_(part)
            )
            for idx, digest in conn.execute(query):
                found[(level, int(idx))] = bytes(digest)
    return found


class MissingNode(AuditError):
    """A node the tree needs is not stored: the log has been truncated or damaged."""


def node_reader(stored: dict[tuple[int, int], bytes]) -> merkle.NodeReader:
    def get_node(level: int, index: int) -> bytes:
        try:
            return stored[(level, index)]
        except KeyError:
            first = index << level
            raise MissingNode(
                f"Merkle node ({level}, {index}) over seq {first}..{first + (1 << level) - 1} "
                "is missing from audit_nodes"
            ) from None

    return get_node


def load_frontier(conn: Connection, size: int) -> merkle.Frontier:
    keys = merkle.nodes_needed_for_frontier(size)
    return merkle.frontier_from_nodes(size, node_reader(fetch_nodes(conn, keys)))


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    created_at: str


def latest_checkpoint(conn: Connection) -> StoredCheckpoint | None:
    row = conn.execute(
        sa.select(checkpoints).order_by(checkpoints.c.size.desc()).limit(1)
    ).one_or_none()
    return _checkpoint(row) if row else None


def checkpoint_covering(conn: Connection, seq: int) -> StoredCheckpoint | None:
    """The latest checkpoint whose tree includes ``seq``."""
    row = conn.execute(
        sa.select(checkpoints)
        .where(checkpoints.c.size > seq)
        .order_by(checkpoints.c.size.desc())
        .limit(1)
    ).one_or_none()
    return _checkpoint(row) if row else None


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(int(row.size), bytes(row.root), row.note, row.created_at)


def pending_count(conn: Connection) -> int:
    """Records waiting to be sequenced: the database's own pending rows and, on SQLite, the
    inbox's (``geopin.audit.inbox``) and the router processes' journals' that are not in the
    inbox yet (``geopin.audit.journal``)."""
    own = int(conn.scalar(sa.select(sa.func.count()).select_from(pending)) or 0)
    database = conn.engine.url.database
    journaled = (
        journal.waiting(journal.journal_dir(database))
        if conn.dialect.name == "sqlite" and database
        else 0
    )
    return own + waiting(conn)[0] + journaled


def inclusion_proof(conn: Connection, seq: int, size: int) -> list[bytes]:
    stored = fetch_nodes(conn, merkle.nodes_needed_for_inclusion(seq, size))
    return merkle.inclusion_proof(seq, size, node_reader(stored))


class AuditStore:
    """An audit database, for the read side: the CLI, the HTTP API, proofs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> AuditStore:
        return cls(create_audit_engine(url))

    @property
    def where(self) -> str:
        return redact(self.engine.url.render_as_string(hide_password=False))

    def pending_count(self) -> int:
        with translate_errors(f"counting pending records in {self.where}"):
            with self.engine.connect() as conn:
                return pending_count(conn)

    def proof_bundle(self, decision_id: str, *, kind: str = "decision") -> dict[str, Any]:
        """The proof bundle of the ``kind`` record of ``decision_id`` against the latest
        checkpoint that covers it."""
        from geopin.audit.proof import make_bundle

        with translate_errors(f"building a proof from {self.where}"):
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(records.c.seq, records.c.body)
                    .where(records.c.decision_id == decision_id, records.c.kind == kind)
                    .order_by(records.c.seq)
                    .limit(1)
                ).one_or_none()
                if row is None:
                    waiting = pending_count(conn)
                    hint = (
                        f" ({waiting} records are waiting to be sequenced: run "
                        "`geopin audit sequence` and try again)"
                        if waiting
                        else ""
                    )
                    raise AuditError(f"no sequenced {kind} record for decision {decision_id}{hint}")
                seq = int(row.seq)
                if row.body is None:
                    raise AuditError(f"the {kind} record of {decision_id} (seq {seq}) was pruned")
                checkpoint = checkpoint_covering(conn, seq)
                if checkpoint is None:
                    raise AuditError(
                        f"the {kind} record of {decision_id} (seq {seq}) is not covered by a "
                        "signed checkpoint yet: run `geopin audit sequence --checkpoint`"
                    )
                proof = inclusion_proof(conn, seq, checkpoint.size)
                return make_bundle(bytes(row.body), seq, proof, checkpoint.note)
