"""Connecting to the audit database, and translating its failures into geopin's errors.

SQLite (the embedded default) runs in WAL mode. ``synchronous=NORMAL`` (the default) makes a
committed transaction survive the death of the process (it is in the WAL file, in the kernel's
page cache), which is the durability ``AuditWriter.record()`` promises; ``FULL`` also fsyncs the
WAL on every commit so it survives power loss, at a cost measured in ``bench/README.md``.
PostgreSQL commits durably with its own ``synchronous_commit`` (on by default).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from geopin.errors import AuditError, AuditUnavailable, ConfigError

DEFAULT_URL = "sqlite:///geopin-audit.db"
URL_ENVVAR = "GEOPIN_AUDIT_DATABASE_URL"

SqliteSync = Literal["NORMAL", "FULL"]
_BUSY_TIMEOUT_S = 30.0


def create_audit_engine(
    url: str = DEFAULT_URL, *, sqlite_synchronous: SqliteSync = "NORMAL"
) -> Engine:
    """An engine for the audit database at ``url`` (SQLite or PostgreSQL via psycopg)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"audit database URL {url!r} is not a database URL: {exc}") from exc
    if sqlite_synchronous not in ("NORMAL", "FULL"):
        raise ConfigError(f"sqlite synchronous must be NORMAL or FULL, not {sqlite_synchronous!r}")
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, pool_pre_ping=True)
    if backend != "sqlite":
        raise ConfigError(f"audit database must be SQLite or PostgreSQL, not {backend!r} ({url})")
    if parsed.database in (None, "", ":memory:"):
        raise ConfigError("the audit database must be a SQLite file, not an in-memory database")
    return _sqlite_engine(parsed, sqlite_synchronous)


def _sqlite_engine(url: sa.URL, synchronous: SqliteSync, **options: Any) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_S}, **options)
    _configure_sqlite(engine, synchronous)
    _SYNCHRONOUS[engine] = synchronous
    return engine


_SYNCHRONOUS: weakref.WeakKeyDictionary[Engine, SqliteSync] = weakref.WeakKeyDictionary()


def sqlite_synchronous(engine: Engine) -> SqliteSync | None:
    """The ``synchronous`` setting of a SQLite engine's connections; None for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return None
    return _SYNCHRONOUS.get(engine, "NORMAL")


def sqlite_engine_like(engine: Engine, path: str) -> Engine:
    """An engine for another SQLite file, set up as ``engine`` is, that keeps no connection
    open between uses (its users hold theirs, or open one now and then)."""
    synchronous = _SYNCHRONOUS.get(engine, "NORMAL")
    return _sqlite_engine(engine.url.set(database=path), synchronous, poolclass=sa.pool.NullPool)


def _configure_sqlite(engine: Engine, synchronous: SqliteSync) -> None:
    # pysqlite's own transaction handling cannot start BEGIN IMMEDIATE; take it over (the
    # SQLAlchemy-documented recipe) so writers can ask for the write lock up front.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _into_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _into_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``. Switching a file into WAL needs it to itself, and SQLite
    answers "database is locked" at once, without its busy handler, when another connection
    has it meanwhile (two workers opening a new database together): so wait and try again, as
    the busy timeout would (on a file already in WAL mode, as it stays, the pragma changes
    nothing)."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def write_connection(engine: Engine) -> sa.Connection:
    """A connection whose transactions take the write lock at BEGIN on SQLite.

    Taking it late (a read that becomes a write) can fail with "database is locked" without
    waiting; taking it first makes concurrent writers queue on the busy timeout instead.
    """
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
    return conn


class WriteGate:
    """A mutex per SQLite file, taken around every write transaction in this process.

    Threads of one process that want SQLite's write lock at once (the audit writer and the
    sequencer) queue on it and wake the moment it is free, instead of on SQLite's busy handler,
    which retries after sleeps of 1, 2, 5, ... up to 100 ms. Other processes still meet at
    SQLite's lock. The request path goes first: background work (``background()``) lets a
    waiting ``foreground()`` in before it takes the gate, for at most ``_YIELD_S``, since a
    plain mutex would let the thread that just released it take it straight back.
    """

    _YIELD_S = 0.01

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._foreground_waiting = 0

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Wait for the gate, counted as waiting so that background work lets it in first."""
        with self._count:
            self._foreground_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._foreground_waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def background(self) -> Iterator[None]:
        deadline = time.monotonic() + self._YIELD_S
        while self._foreground_waiting and time.monotonic() < deadline:
            time.sleep(0.0001)
        with self._lock:
            yield


_GATES: dict[str, WriteGate] = {}
_GATES_LOCK = threading.Lock()


@contextmanager
def sqlite_write(driver: Any) -> Iterator[None]:
    """One write transaction straight on the SQLite driver: ``BEGIN IMMEDIATE`` (SQLite's
    single write lock, taken at once), ``COMMIT`` when the block ends, ``ROLLBACK`` on any
    failure (interruptions included)."""
    driver.execute("BEGIN IMMEDIATE")
    try:
        yield
        driver.execute("COMMIT")
    except BaseException:
        if driver.in_transaction:
            driver.execute("ROLLBACK")
        raise


def sqlite_write_gate(engine: Engine) -> WriteGate | None:
    """The write gate of the engine's SQLite file (None for PostgreSQL)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return None
    path = os.path.realpath(database)
    with _GATES_LOCK:
        gate = _GATES.get(path)
        if gate is None:
            gate = _GATES[path] = WriteGate()
    return gate


_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SQLAlchemy/driver failures into AuditUnavailable (cannot reach or lock the database)
    or AuditError (anything else), naming what was being done."""
    try:
        yield
    except AuditError:
        raise
    except sa.exc.DBAPIError as exc:
        cls = (
            AuditUnavailable
            if isinstance(exc, _UNAVAILABLE) or exc.connection_invalidated
            else AuditError
        )
        raise cls(f"{what}: {_describe(exc)}") from exc
    except sqlite3.OperationalError as exc:  # locked, cannot open, disk I/O or disk full
        raise AuditUnavailable(f"{what}: {_describe(exc)}") from exc
    except (sa.exc.SQLAlchemyError, sqlite3.Error, psycopg.Error) as exc:
        raise AuditError(f"{what}: {_describe(exc)}") from exc
    except OSError as exc:
        raise AuditUnavailable(f"{what}: {exc}") from exc


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
