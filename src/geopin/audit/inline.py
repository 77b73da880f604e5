"""Committing on the event loop: the audit write of a request that is alone.

A record handed to the writer's thread costs two thread wake-ups and a hand-off back to the
event loop before the request may go on, which at concurrency 1 is most of what the audit
adds to a request. When the request is the only one in flight, nobody else waits for the loop,
so its record is committed right there: one SQLite transaction on a connection of the loop's
own, taking along the outcome records that linger. It is tried only when it cannot block for
long:

- SQLite with ``synchronous=NORMAL`` (a commit is a write to the WAL in the page cache; with
  ``FULL`` it would be an fsync on the loop);
- the in-process write gate is free within ``wait_s`` (a few milliseconds). It is taken from
  this process's other writers, the sequencer's short transactions above all: waiting for
  one on the loop costs nobody else (the request is alone), lets that thread have the GIL
  and the CPU, and wakes the moment it is done. Handing the commit to the writer's thread
  instead took 0.8-1.0 ms at the median, for 8-10% of the requests at concurrency 1 (a
  sequencer transaction stretched by the event loop holding the GIL); waiting here trims
  the tail of that wait, it does not remove it (``bench/README.md``);
- SQLite's own lock is free: the connection's busy timeout is 0, so another process holding
  it makes the commit fail at once instead of waiting.

Anything else (the gate still taken, the lock held, any database error) returns False and the
caller hands the records to the writer's thread as usual; after an error, committing here is
not tried again for ``retry_s``, so a database that is down costs one failed attempt, not one
per request.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from sqlalchemy.engine import Engine

from geopin.audit.db import WriteGate, sqlite_write

log = logging.getLogger(__name__)


class LoopCommitter:
    """A SQLite connection used only from the event loop's thread, for uncontended commits."""

    def __init__(
        self, engine: Engine, gate: WriteGate, insert: str, *, retry_s: float, wait_s: float
    ) -> None:
        self.engine = engine
        self.gate = gate
        self.wait_s = wait_s
        self.insert = insert
        self.retry_s = retry_s
        self._raw: Any = None
        self._driver: Any = None
        self._paused_until = 0.0
        self._never = False  # set once the database turns out to fsync every commit

    def commit(self, rows: list[tuple[str, bytes]]) -> bool:
        """Insert ``rows`` in one transaction now; False if that cannot be done without
        waiting longer than ``wait_s`` (nothing is then written)."""
        if self._never or time.monotonic() < self._paused_until:
            return False
        if not self.gate.try_foreground(self.wait_s):
            return False
        try:
            driver = self._connection()
            if driver is None:
                return False
            with sqlite_write(driver):
                driver.executemany(self.insert, rows)
            return True
        except sqlite3.Error as exc:
            if not _is_busy(exc):  # a lock held elsewhere is normal; anything else pauses
                log.warning("audit commit on the event loop failed, using the writer: %s", exc)
                self._paused_until = time.monotonic() + self.retry_s
                self.close()
            return False
        finally:
            self.gate.release()

    def close(self) -> None:
        raw, self._raw, self._driver = self._raw, None, None
        if raw is not None:
            try:
                raw.close()
            except sqlite3.Error:
                pass

    def _connection(self) -> Any:
        """The loop's connection; None when commits may fsync (``synchronous=FULL``)."""
        if self._driver is None:
            raw = self.engine.raw_connection()
            raw.detach()  # its pragmas below must not reach the pool's other users
            driver: Any = raw.dbapi_connection
            (synchronous,) = driver.execute("PRAGMA synchronous").fetchone()
            if synchronous >= 2:  # FULL or EXTRA: an fsync per commit, never on the loop
                self._never = True
                raw.close()
                return None
            driver.execute("PRAGMA busy_timeout=0")  # never wait for another process's lock
            driver.execute("PRAGMA wal_autocheckpoint=0")  # never checkpoint inside a commit
            self._raw, self._driver = raw, driver
        return self._driver


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)
