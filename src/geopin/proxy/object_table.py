"""Where made objects live, shared by every worker and router of one database.

``ObjectHomes`` (``geopin.proxy.objects``) remembers, per process, the objects it saw made. With
several workers (``geopin serve --workers N``) or routers behind a balancer, the call that
reads or continues an object often reaches one that did not see it made: that one looks in the
database's ``object_homes`` table, to which every router writes the objects it sees made.

- Writing stays off the request path: ``remember`` queues the row and returns; a thread of its
  own upserts what is queued, in one transaction, as soon as it is there (the client has its
  answer by then, and the call naming the object comes after it), and now and then deletes
  the rows older than the retention, a few hundred per transaction.
- A lookup happens only for a call naming an object this process does not know, on one of a
  few threads, for at most ``timeout_s``. An error or a timeout is logged (once a minute at
  most), the call is routed as if nothing were known, and lookups pause for ``pause_s``; a
  row that cannot be written is logged and dropped. The table helps routing; it decides nothing.
- A row found is only ever a pin: the policy still decides, and an object outside the places
  the call may now be processed in is refused (451), never looked for elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from geopin.audit.db import sqlite_write_gate, translate_errors, write_connection
from geopin.audit.schema import object_homes
from geopin.errors import AuditError

log = logging.getLogger(__name__)

_BATCH = 256  # rows per upsert or delete transaction
_PRUNE_EVERY_S = 3600.0
_WARN_EVERY_S = 60.0
_LOOKUP_THREADS = 4  # one slow lookup does not hold up the calls behind it

Row = tuple[str, str, str, int]  # tenant ("" for none), object id, endpoint, made at (Unix s)


class ObjectTable:
    """The ``object_homes`` table of one database, read and written off the event loop, through
    ``engine`` (the audit writer's; its owner disposes of it)."""

    def __init__(
        self,
        engine: Engine,
        *,
        retention_s: float,
        timeout_s: float = 0.5,
        pause_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self.engine = engine
        self.retention_s = retention_s
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self._clock = clock
        self._queue: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lookups: ThreadPoolExecutor | None = None
        self._running: set[futures.Future[tuple[str, str] | None]] = set()
        self._paused_until = 0.0
        self._warned_at: dict[str, float] = {}
        self._upsert = _upsert(engine.dialect.name)
        self._gate = sqlite_write_gate(engine)
        self.written = 0  # rows upserted
        self.dropped = 0  # rows that could not be written
        self.lookups = 0  # lookups asked of the database
        self.found = 0  # ...that found an object
        self.not_found = 0  # ...that found none of the objects named
        self.failed = 0  # ...that failed or timed out

    def start(self) -> None:
        if self._thread is not None:
            return
        self._lookups = ThreadPoolExecutor(
            _LOOKUP_THREADS, thread_name_prefix="geopin-object-lookup"
        )
        self._thread = threading.Thread(target=self._work, name="geopin-object-homes", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for ``timeout_s`` at most), then let the threads go."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)
        lookups, self._lookups = self._lookups, None
        if lookups is not None:
            lookups.shutdown(wait=False, cancel_futures=True)
            futures.wait(list(self._running), timeout_s)  # a lookup given up may still run

    def remember(self, tenant: str | None, object_id: str, endpoint: str) -> None:
        """Queue the row; it is written shortly, by the table's own thread."""
        if self._thread is not None:
            self._queue.put((tenant or "", object_id, endpoint, int(self._clock())))

    async def find(self, tenant: str | None, names: list[str]) -> tuple[str, str] | None:
        """The first of ``names`` the tenant's calls made, and its endpoint, as the table has
        it; None when it has none of them, or cannot say within ``timeout_s``."""
        lookups = self._lookups
        if lookups is None or not names or time.monotonic() < self._paused_until:
            return None
        self.lookups += 1
        running = lookups.submit(self.lookup, tenant, names)
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        try:
            found = await asyncio.wait_for(asyncio.wrap_future(running), self.timeout_s)
        except (AuditError, TimeoutError) as exc:
            self.failed += 1
            self._paused_until = time.monotonic() + self.pause_s
            why = str(exc) or f"no answer within {self.timeout_s} s"
            self._warn("lookup", f"looking up where objects were made failed: {why}")
            return None
        if found is None:
            self.not_found += 1
        else:
            self.found += 1
        return found

    def stats(self) -> dict[str, int | bool]:
        """What the table has done in this process, for the admin API."""
        return {
            "queued": self._queue.qsize(),
            "written": self.written,
            "dropped": self.dropped,
            "lookups": self.lookups,
            "found": self.found,
            "not_found": self.not_found,
            "failed": self.failed,
            "paused": time.monotonic() < self._paused_until,
        }

    def lookup(self, tenant: str | None, names: list[str]) -> tuple[str, str] | None:
        """``find``'s query, on the calling thread; AuditError when the database fails."""
        table = object_homes
        query = sa.select(table.c.object_id, table.c.endpoint).where(
            table.c.tenant == (tenant or ""),
            table.c.object_id.in_(names),
            table.c.made_at >= self._cutoff(),
        )
        with translate_errors("reading object_homes"), self.engine.connect() as conn:
            found = {name: endpoint for name, endpoint in conn.execute(query)}
        for name in names:
            if name in found:
                return name, found[name]
        return None

    def _cutoff(self) -> int:
        return math.floor(self._clock() - self.retention_s)

    def _work(self) -> None:
        pruned_at = -math.inf
        while True:
            batch, stop = self._take(pruned_at + _PRUNE_EVERY_S - time.monotonic())
            if batch:
                self._write(batch)
            if stop:
                return
            if time.monotonic() >= pruned_at + _PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                self.prune()

    def _take(self, wait_s: float) -> tuple[list[Row], bool]:
        """What is queued (``_BATCH`` rows at most), waiting up to ``wait_s`` for the first;
        and whether ``close()`` asked the thread to stop."""
        batch: list[Row] = []
        try:
            item = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
            while item is not None:
                batch.append(item)
                if len(batch) >= _BATCH:
                    return batch, False
                item = self._queue.get_nowait()
        except queue.Empty:
            return batch, False
        return batch, True

    def _write(self, batch: list[Row]) -> None:
        rows = {(tenant, made): (tenant, made, at, when) for tenant, made, at, when in batch}
        values = [
            {"tenant": tenant, "object_id": made, "endpoint": at, "made_at": when}
            for tenant, made, at, when in rows.values()
        ]
        try:
            with self._transaction("writing object_homes") as conn:
                conn.execute(self._upsert, values)
        except AuditError as exc:
            self.dropped += len(values)
            self._warn("write", f"{len(values)} object home(s) not kept: {exc}")
            return
        self.written += len(values)

    def prune(self) -> int:
        """Delete the rows older than the retention, ``_BATCH`` per transaction; how many."""
        table = object_homes
        key = sa.tuple_(table.c.tenant, table.c.object_id)
        deleted = 0
        while True:
            doomed = (
                sa.select(table.c.tenant, table.c.object_id)
                .where(table.c.made_at < self._cutoff())
                .limit(_BATCH)
            )
            try:
                with self._transaction("pruning object_homes") as conn:
                    count = conn.execute(sa.delete(table).where(key.in_(doomed))).rowcount
            except AuditError as exc:
                self._warn("prune", str(exc))
                return deleted
            deleted += count
            if count < _BATCH:
                return deleted

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sa.Connection]:
        gate = self._gate.background() if self._gate is not None else nullcontext()
        with translate_errors(what), gate, write_connection(self.engine) as conn, conn.begin():
            yield conn

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(kind, -math.inf) >= _WARN_EVERY_S:
            self._warned_at[kind] = now
            log.warning("%s", message)


def _upsert(dialect: str) -> Any:
    """INSERT, or on a row of the same (tenant, object id) replace its endpoint and time."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(object_homes)
    return statement.on_conflict_do_update(
        index_elements=[object_homes.c.tenant, object_homes.c.object_id],
        set_={"endpoint": statement.excluded.endpoint, "made_at": statement.excluded.made_at},
    )
