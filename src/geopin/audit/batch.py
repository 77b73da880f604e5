"""A sequencer batch: the next pending records, prepared for the log, and how it is stored.

``plan`` reads everything a batch needs and computes its rows and Merkle nodes, which on SQLite
happens in a read transaction that holds nobody up. ``apply`` stores a batch in one go (the
PostgreSQL path, inside the advisory lock's transaction); ``store_in_chunks`` stores it on
SQLite a few records per transaction, each a complete append whose nodes and inbox mark go
with it (``geopin.audit.inbox``), through the driver, so nobody waits long for the log's lock.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from geopin.audit import merkle
from geopin.audit.db import WriteGate, sqlite_write
from geopin.audit.inbox import MARK_SQL, read_mark, take
from geopin.audit.records import flat_values, rule_ids
from geopin.audit.schema import FLAT_FIELDS, nodes, pending, record_rules, records
from geopin.audit.store import chunks, load_frontier, tree_size
from geopin.errors import AuditError

log = logging.getLogger("geopin.audit.sequencer")

# Records per SQLite write transaction: the audit writer waits for one at most.
SQLITE_CHUNK = 16


# Rows are tuples in their table's column order: a dict per row, then a tuple per statement,
# cost the sequencer more than the inserts themselves.
_RECORD_COLUMNS = tuple(column.name for column in records.columns)
if _RECORD_COLUMNS != ("seq", "record_id", *FLAT_FIELDS, "body"):
    raise AssertionError(f"audit_records columns changed: {_RECORD_COLUMNS}")
_RULE_COLUMNS = ("seq", "rule_id")
_NODE_COLUMNS = ("level", "idx", "hash")
if tuple(c.name for c in record_rules.columns) != _RULE_COLUMNS or (
    tuple(c.name for c in nodes.columns) != _NODE_COLUMNS
):
    raise AssertionError("audit_record_rules or audit_nodes columns changed")


@dataclass
class Batch:
    """One batch, prepared: the rows it adds (tuples in column order: ``records`` rows
    (seq, record_id, kind, ts, the flat keys, body), rules (seq, rule_id), nodes
    (level, idx, hash)), the pending rows it removes and, on SQLite, how far into the inbox it
    takes the log."""

    size: int  # the tree size it extends
    new_size: int
    # Per record, in sequence order: its row in the database's audit_pending, to delete (None
    # for one from the inbox, which is swept instead).
    pending_ids: list[int | None] = field(default_factory=list)
    duplicate_ids: list[int] = field(default_factory=list)  # pending copies of sequenced ones
    duplicates: int = 0
    oldest: float | None = None  # Unix time of its oldest record, if the id tells it
    inbox: str | None = None  # the inbox's identity, when the batch takes rows from it
    inbox_mark: int = 0  # how far into the inbox the log goes once the batch is stored
    # The inbox rows it takes, in id order: (id, the leaf it becomes, -1 for a duplicate).
    inbox_rows: list[tuple[int, int]] = field(default_factory=list)
    record_rows: list[tuple[Any, ...]] = field(default_factory=list)
    rule_rows: list[tuple[int, str]] = field(default_factory=list)
    nodes: list[tuple[int, int, bytes]] = field(default_factory=list)

    def counts(self) -> tuple[int, int, int, float | None]:
        """(records sequenced, duplicates dropped, the new tree size, the oldest's time)."""
        return self.new_size - self.size, self.duplicates, self.new_size, self.oldest


def plan(conn: Connection, limit: int) -> Batch:
    """The next batch of pending records, with every row and node it adds to the log."""
    return build(*read(conn, limit))


def read(
    conn: Connection,
    limit: int,
    inbox: tuple[Engine, str] | None = None,
) -> tuple[Batch, list[bytes], merkle.Frontier | None]:
    """What the next batch is made of, read in the caller's transaction: the batch without its
    rows, the bodies of its fresh records and the frontier of the tree they extend (None when
    there are none). ``build`` then makes its rows, with no transaction needed (on SQLite a
    read transaction held meanwhile would keep the WAL from being copied past it).

    ``inbox``: the inbox's engine and identity; its rows above the log's mark follow the
    database's own pending rows, as many as ``limit`` leaves room for."""
    rows: list[Any] = list(
        conn.execute(
            sa.select(pending.c.id, pending.c.record_id, pending.c.body)
            .order_by(pending.c.id)
            .limit(limit)
        ).all()
    )
    own = len(rows)
    mark = 0
    if inbox is not None:
        engine, identity = inbox
        mark = read_mark(conn, identity)
        rows.extend(take(engine, identity, mark, limit - own))
    size = tree_size(conn)
    batch = Batch(size=size, new_size=size, inbox=inbox[1] if inbox and own < len(rows) else None)
    batch.inbox_mark = rows[-1].id if own < len(rows) else mark
    if not rows:
        return batch, [], None
    seen: set[str] = set()
    for part in chunks([row.record_id for row in rows]):
        seen.update(
            conn.scalars(sa.select(records.c.record_id).where(records.c.record_id.in_(part)))
        )
    bodies: list[bytes] = []
    duplicates = 0
    for position, row in enumerate(rows):
        mine = position < own
        if row.record_id in seen:  # in the log already, or earlier in this batch
            duplicates += 1
            if mine:
                batch.duplicate_ids.append(row.id)
            else:
                batch.inbox_rows.append((row.id, -1))
            continue
        seen.add(row.record_id)
        if not mine:
            batch.inbox_rows.append((row.id, size + len(bodies)))
        batch.pending_ids.append(row.id if mine else None)
        bodies.append(bytes(row.body))
    batch.duplicates = duplicates
    batch.new_size = size + len(bodies)
    batch.oldest = id_time(rows[0].record_id)
    if duplicates:
        log.info("audit sequencer: %d pending records were already sequenced", duplicates)
    return batch, bodies, load_frontier(conn, size)


def build(batch: Batch, bodies: list[bytes], frontier: merkle.Frontier | None) -> Batch:
    """``batch`` as ``read`` left it, with its record and rule rows and Merkle nodes made."""
    if not bodies or frontier is None:
        return batch
    _, completed = merkle.append(frontier, [merkle.leaf_hash(b) for b in bodies])
    record_rows, rule_rows = batch.record_rows, batch.rule_rows
    batch.nodes = list(completed)
    size = batch.size
    for offset, body in enumerate(bodies):
        if offset % 16 == 15:
            time.sleep(0)  # let the event loop's thread have the GIL: this is CPU work
        seq = size + offset
        try:
            record = json.loads(body)
        except ValueError as exc:  # the writer only enqueues canonical JSON
            raise AuditError(f"pending audit record is not JSON: {body[:80]!r}") from exc
        record_rows.append((seq, record["id"], *flat_values(record), body))
        rule_rows.extend((seq, rule) for rule in rule_ids(record))
    return batch


def apply(conn: Connection, batch: Batch) -> None:
    """Store the whole batch through SQLAlchemy, in the caller's transaction."""
    record_rows, rule_rows, node_rows = batch.record_rows, batch.rule_rows, batch.nodes
    gone = [i for i in batch.pending_ids if i is not None] + batch.duplicate_ids
    for table, names, rows in (
        (records, _RECORD_COLUMNS, record_rows),
        (record_rules, _RULE_COLUMNS, rule_rows),
        (nodes, _NODE_COLUMNS, node_rows),
    ):
        if rows:
            conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
    for part in chunks(gone):
        conn.execute(pending.delete().where(pending.c.id.in_(part)))


def store_in_chunks(engine: Engine, gate: WriteGate, batch: Batch) -> None:
    """A few records per transaction, each a complete append, straight through the driver
    (SQLAlchemy's own work per statement would be most of the time the lock is held): the
    writer waits for one short transaction at most, never for the whole batch."""
    with engine.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        # Checkpointing the WAL inside a commit would make the transaction longer; the end of
        # the run does it.
        driver.execute("PRAGMA wal_autocheckpoint=0")
        for lo, chunk in _chunks(batch, SQLITE_CHUNK):
            statements = _chunk_statements(chunk, batch.inbox)
            with gate.background(), sqlite_write(driver):
                (top,) = driver.execute(_SQLITE_TREE_TOP).fetchone()
                if (0 if top is None else top + 1) != lo:  # only without the lock file
                    raise AuditError("another sequencer extended the log meanwhile")
                for sql, rows in statements:
                    driver.executemany(sql, rows)


def _insert_sql(table: sa.Table) -> str:
    names = [column.name for column in table.columns]
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})"


_SQLITE_TREE_TOP = "SELECT max(idx) FROM audit_nodes WHERE level = 0"
_SQLITE_DELETE = "DELETE FROM audit_pending WHERE id = ?"
_SQLITE_INSERTS = [_insert_sql(table) for table in (records, record_rules, nodes)]


# record rows, rule rows, node rows, pending ids, the inbox mark after it (None: unchanged)
_Rows = tuple[list, list, list, list[int], int | None]


def _chunk_statements(rows: _Rows, inbox: str | None) -> list[tuple[str, list[tuple]]]:
    """The driver statements storing one chunk's rows."""
    out: list[tuple[str, list[tuple]]] = []
    for sql, part in zip(_SQLITE_INSERTS, rows[:3], strict=True):
        if part:
            out.append((sql, part))
    if rows[3]:
        out.append((_SQLITE_DELETE, [(pending_id,) for pending_id in rows[3]]))
    if rows[4] is not None:
        out.append((MARK_SQL, [(inbox, rows[4])]))
    return out


def _chunks(batch: Batch, step: int) -> list[tuple[int, _Rows]]:
    """``batch`` cut into runs of ``step`` leaves, each with its first leaf's sequence number
    and its rows: its records, their rules, the Merkle nodes its leaves complete, the pending
    rows it removes (the duplicates go with the first run) and the inbox mark it sets: the
    last inbox row before the first one stored by a later run. One pass over each list."""
    starts = list(range(batch.size, batch.new_size, step)) or [batch.size]
    rules: list[list] = [[] for _ in starts]
    completed: list[list] = [[] for _ in starts]

    def run_of(leaf: int) -> int:
        if not batch.size <= leaf < max(batch.new_size, batch.size + 1):
            raise AuditError(f"batch {batch.size}..{batch.new_size} holds a row of leaf {leaf}")
        return (leaf - batch.size) // step

    for row in batch.rule_rows:
        rules[run_of(row[0])].append(row)
    for node in batch.nodes:
        # A node of level L and index i is completed by leaf (i + 1) * 2**L - 1.
        level, idx, _ = node
        completed[run_of(((idx + 1) << level) - 1)].append(node)
    inbox_rows, next_inbox = batch.inbox_rows, 0
    out = []
    for i, lo in enumerate(starts):
        first, last = lo - batch.size, min(lo + step, batch.new_size) - batch.size
        gone = [p for p in batch.pending_ids[first:last] if p is not None]
        if i == 0:
            gone += batch.duplicate_ids
        mark = None
        while next_inbox < len(inbox_rows) and inbox_rows[next_inbox][1] < lo + step:
            mark = inbox_rows[next_inbox][0]  # a duplicate (-1) or stored by this run
            next_inbox += 1
        out.append((lo, (batch.record_rows[first:last], rules[i], completed[i], gone, mark)))
    return out


def id_time(record_id: str) -> float | None:
    """The creation time a UUIDv7 record id carries (its first 48 bits are Unix ms)."""
    digits = record_id.replace("-", "")
    if len(digits) != 32 or digits[12] != "7":
        return None
    try:
        return int(digits[:12], 16) / 1000
    except ValueError:
        return None
