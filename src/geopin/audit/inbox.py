"""The inbox: on SQLite, the audit writers' records wait for the sequencer in a file of their own.

SQLite has one write lock per file. With the pending records in the log's file, a request's
commit and the sequencer's appends met at that lock, and every few hundred requests a commit
waited for an append (about a millisecond, stretched by the event loop holding the GIL):
most of the router's added p99 at concurrency 1 (``bench/README.md``). So on SQLite the
writers insert into ``audit_pending`` in ``<database>-pending`` beside the database, and the
sequencer, which appends to the log in the database's own file, only reads the inbox:

- Inbox ids never go back, and a row becomes visible only once committed, in id order (one
  writer at a time). An id is one above the highest in the table, and the sweep always leaves
  the newest row (``AUTOINCREMENT`` would guarantee it too, at a quarter of every commit).
- The log keeps, in ``audit_inbox_marks``, the highest inbox id it holds, written in the same
  transaction as the records it appends: the sequencer takes the rows above it, so a crash
  between the append and anything after it loses or repeats nothing.
- Rows at or below the mark are deleted from the inbox now and then (``Sweep``), a few hundred
  per short transaction: the only time the sequencer takes the inbox's write lock.
- No index on the record id: keeping one cost each commit a fifth of its time. A record
  written twice (a spool replayed after a commit whose answer was lost) is dropped when
  sequenced, as a copy of one the log holds or one earlier in the same batch.
- The inbox has a random identity (``audit_inbox_id``) and the mark is kept per identity: an
  inbox deleted and made anew starts from nothing, and none of its records is mistaken for
  one already sequenced.

A database's own ``audit_pending`` is still read first (records there come from a prune, which
records itself in the log's transaction, and from geopin before the inbox); PostgreSQL has no
single write lock, so there the writers insert into the database's ``audit_pending`` and there
is no inbox. Back up the inbox with the database: its records are not in the log yet.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from geopin.audit.db import WriteGate, sqlite_engine_like, sqlite_write
from geopin.audit.schema import inbox_marks
from geopin.errors import AuditUnavailable

SUFFIX = "-pending"

_DDL = (
    "CREATE TABLE IF NOT EXISTS audit_pending ("
    "id INTEGER PRIMARY KEY, "
    "record_id VARCHAR NOT NULL, "
    "body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_inbox_id (uuid VARCHAR NOT NULL)",
)
_IDENTITY = "SELECT uuid FROM audit_inbox_id LIMIT 1"
INSERT_SQL = "INSERT INTO audit_pending (record_id, body) VALUES (?, ?)"


def inbox_path(engine: Engine) -> str | None:
    """The inbox file of a SQLite audit database (None for PostgreSQL)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return None
    return os.path.realpath(database) + SUFFIX


def inbox_engine(engine: Engine) -> Engine | None:
    """An engine for ``engine``'s inbox, with the same pragmas (None for PostgreSQL). Its
    users in one process share the inbox's write gate (``db.sqlite_write_gate``)."""
    path = inbox_path(engine)
    return None if path is None else sqlite_engine_like(engine, path)


def ensure(inbox: Engine) -> str:
    """Create the inbox's tables if they are missing; its identity."""
    with inbox.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        found = driver.execute(_IDENTITY).fetchone() if _has_tables(driver) else None
        if found is not None:
            return str(found[0])
        with sqlite_write(driver):
            for statement in _DDL:
                driver.execute(statement)
            found = driver.execute(_IDENTITY).fetchone()
            if found is None:
                found = (uuid.uuid4().hex,)
                driver.execute("INSERT INTO audit_inbox_id (uuid) VALUES (?)", found)
        return str(found[0])


def _has_tables(driver: Any) -> bool:
    names = {row[0] for row in driver.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return {"audit_pending", "audit_inbox_id"} <= names


@dataclass(frozen=True)
class Row:
    id: int
    record_id: str
    body: bytes


def read_mark(conn: Connection, identity: str) -> int:
    """The highest id of inbox ``identity`` that the log holds (0: none)."""
    mark = conn.scalar(
        sa.select(inbox_marks.c.sequenced_through).where(inbox_marks.c.inbox == identity)
    )
    return 0 if mark is None else int(mark)


MARK_SQL = (
    "INSERT INTO audit_inbox_marks (inbox, sequenced_through) VALUES (?, ?) "
    "ON CONFLICT (inbox) DO UPDATE SET sequenced_through = excluded.sequenced_through"
)


def take(inbox: Engine, identity: str, after: int, limit: int) -> list[Row]:
    """Up to ``limit`` inbox rows above id ``after``, in id order (a read: no lock taken).
    Nothing if the inbox is no longer ``identity`` (replaced meanwhile: the next pass starts
    over with the new one)."""
    if limit <= 0:
        return []
    with inbox.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.execute("BEGIN")
        try:
            found = driver.execute(_IDENTITY).fetchone()
            if found is None or found[0] != identity:
                return []
            rows = driver.execute(
                "SELECT id, record_id, body FROM audit_pending WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        finally:
            driver.execute("COMMIT")
    return [Row(int(i), rid, bytes(body)) for i, rid, body in rows]


def insert(inbox: Engine, gate: WriteGate, rows: list[tuple[str, bytes]]) -> None:
    """Commit ``rows`` (record id, body) to the inbox in one transaction, as background work:
    the records of a journal whose process ended (``geopin.audit.journal``)."""
    ensure(inbox)
    with gate.background(), inbox.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        with sqlite_write(driver):
            driver.executemany(INSERT_SQL, rows)


class Sweep:
    """Deleting what the log holds from the inbox: rarely (every ``every`` records or
    ``interval_s`` seconds), ``chunk`` rows per transaction, each taken through the inbox's
    write gate as background work, so a request's commit waits for one at most."""

    def __init__(
        self, inbox: Engine, gate: WriteGate, *, every: int = 4096, interval_s: float = 5.0
    ) -> None:
        self.inbox = inbox
        self.gate = gate
        self.every = every
        self.interval_s = interval_s
        self.chunk = 256
        self._swept: dict[str, int] = {}  # per identity: deleted through this id
        self._last = time.monotonic()

    def due(self, identity: str, mark: int, *, now: bool = False) -> bool:
        behind = mark - self._swept.get(identity, 0)
        if behind <= 0:
            return False
        return now or behind >= self.every or time.monotonic() - self._last >= self.interval_s

    def run(self, identity: str, mark: int) -> int:
        """Delete the inbox's rows up to id ``mark``, but for the newest row of all (which keeps
        the next id above it); how many went."""
        deleted = 0
        with self.inbox.connect() as conn:
            driver = conn.connection.dbapi_connection
            assert driver is not None
            driver.execute("PRAGMA wal_autocheckpoint=0")  # the writer's checkpointer does it
            while True:
                with self.gate.background(), sqlite_write(driver):
                    found = driver.execute(_IDENTITY).fetchone()
                    if found is None or found[0] != identity:
                        return deleted
                    gone = driver.execute(
                        "DELETE FROM audit_pending WHERE id IN (SELECT id FROM audit_pending "
                        "WHERE id <= ? AND id < (SELECT max(id) FROM audit_pending) "
                        "ORDER BY id LIMIT ?)",
                        (mark, self.chunk),
                    ).rowcount
                deleted += gone
                if gone < self.chunk:
                    break
        self._swept[identity] = mark
        self._last = time.monotonic()
        return deleted


def waiting(conn: Connection) -> tuple[int, str | None]:
    """How many of the inbox's records the log does not hold yet, and the record id of the
    oldest of them, read from ``conn``'s database and its inbox (0 and None without one).
    A reader never creates the inbox: it is opened only if it exists."""
    path = inbox_path(conn.engine)
    if path is None or not os.path.exists(path):
        return 0, None
    reader = _open_reader(path)
    try:
        found = reader.execute(_IDENTITY).fetchone() if _has_tables(reader) else None
        if found is None:
            return 0, None
        mark = read_mark(conn, str(found[0]))
        (count,) = reader.execute(
            "SELECT count(*) FROM audit_pending WHERE id > ?", (mark,)
        ).fetchone()
        first = reader.execute(
            "SELECT record_id FROM audit_pending WHERE id > ? ORDER BY id LIMIT 1", (mark,)
        ).fetchone()
        return int(count), (first[0] if first else None)
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"reading the audit inbox {path}: {exc}") from exc
    finally:
        reader.close()


def _open_reader(path: str) -> sqlite3.Connection:
    """A connection to an existing inbox (never creating one), read-only if that is all this
    user may do."""
    try:
        return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error:
        try:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"opening the audit inbox {path}: {exc}") from exc
