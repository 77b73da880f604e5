"""AuditWriter: durable, group-committed audit writes for the asyncio router.

``await writer.record(record)`` returns only once the record is committed in the pending table
(or fsync'd to the opt-in spool). Calls that arrive while a commit is running wait for the next
one, which takes them all in one transaction: under load a transaction carries many records,
at rest a record waits for just its own commit. All database work runs in one worker thread so
the event loop never blocks and SQLite sees a single writer connection per process.

If the database cannot take records, ``record()`` raises ``AuditUnavailable`` (the router
answers 503: it fails closed), unless a spool is configured: then the records go to the spool
and are replayed into the database, once, when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from geopin.audit.db import translate_errors, write_connection
from geopin.audit.migrate import check_schema
from geopin.audit.records import encode
from geopin.audit.spool import Spool
from geopin.audit.store import insert_pending
from geopin.errors import AuditError, AuditUnavailable

log = logging.getLogger(__name__)

_Item = tuple[str, bytes, "asyncio.Future[None]"]


@dataclass(frozen=True)
class WriterStats:
    """A snapshot for metrics."""

    queue_depth: int  # records waiting for a commit, including the one in flight
    transactions: int  # commits to the database so far
    records: int  # records committed to the database (replayed spool records included)
    spooled: int  # records written to the spool so far
    spool_backlog: int  # records in the spool waiting to be replayed
    last_commit_s: float | None
    commit_p50_s: float | None  # over the last 1024 commits
    commit_p99_s: float | None


class AuditWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        spool: Spool | str | Path | None = None,
        max_batch: int = 4096,
        retry_interval_s: float = 1.0,
        check: bool = True,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        """``on_commit`` is called in the writer's thread after each committed transaction
        with its duration in seconds; what it raises is logged, never passed on."""
        self.engine = engine
        self.on_commit = on_commit
        self.spool = Spool(spool) if isinstance(spool, str | Path) else spool
        self.max_batch = max_batch
        self.retry_interval_s = retry_interval_s
        self._check = check
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sa.Connection | None = None
        self._in_flight = 0
        self._closing = False
        self._transactions = 0
        self._records = 0
        self._spooled = 0
        self._spool_backlog = 0
        self._latencies: deque[float] = deque(maxlen=1024)
        self._stats_lock = threading.Lock()  # stats() may be called from any thread

    async def start(self) -> None:
        if self._task is not None:
            raise AuditError("AuditWriter already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopin-audit")
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        if self._check:
            try:
                await loop.run_in_executor(self._executor, self._check_schema)
            except AuditUnavailable as exc:
                if self.spool is None:
                    raise
                # Records can still be kept (spooled) and replayed once the database is back.
                log.warning("audit database unavailable at start, spooling: %s", exc)
        await loop.run_in_executor(self._executor, self._replay_spool)
        self._task = asyncio.create_task(self._run(), name="geopin-audit-writer")

    async def record(self, record: Mapping[str, Any]) -> None:
        """Commit ``record`` durably; raise AuditUnavailable if it cannot be kept anywhere."""
        if self._task is None or self._closing or self._wake is None:
            raise AuditError("AuditWriter is not running (call start(), not after close())")
        body = encode(record)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record["id"], body, future))
        self._wake.set()
        await future

    async def close(self) -> None:
        """Commit everything queued, then release the thread and the connection."""
        if self._task is None or self._wake is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        assert self._executor is not None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        """Records accepted by ``record()`` and not yet committed (safe from any thread)."""
        return len(self._queue) + self._in_flight

    def stats(self) -> WriterStats:
        with self._stats_lock:
            latencies = list(self._latencies)
            transactions, records = self._transactions, self._records
        ordered = sorted(latencies)

        def pct(p: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

        return WriterStats(
            queue_depth=self.queue_depth,
            transactions=transactions,
            records=records,
            spooled=self._spooled,
            spool_backlog=self._spool_backlog,
            last_commit_s=latencies[-1] if latencies else None,
            commit_p50_s=pct(0.50),
            commit_p99_s=pct(0.99),
        )

    async def _run(self) -> None:
        assert self._wake is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    timeout = self.retry_interval_s if self._spool_backlog else None
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    await loop.run_in_executor(self._executor, self._replay_spool)
                continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._in_flight = len(batch)
            try:
                await loop.run_in_executor(
                    self._executor, self._commit, [(rid, body) for rid, body, _ in batch]
                )
            except BaseException as exc:  # every waiter hears about the failure
                error = exc if isinstance(exc, AuditError) else AuditError(f"audit write: {exc}")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)
            finally:
                self._in_flight = 0

    # ---- worker thread ------------------------------------------------------------------

    def _check_schema(self) -> None:
        check_schema(self.engine)

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = write_connection(self.engine)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sa.exc.SQLAlchemyError:
                pass
            self._conn = None

    def _insert(self, rows: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        try:
            with translate_errors("writing audit records"):
                conn = self._connection()
                with conn.begin():
                    insert_pending(conn, rows)
        except AuditError:
            self._disconnect()  # a broken connection is not reused
            raise
        elapsed = time.perf_counter() - started
        with self._stats_lock:
            self._latencies.append(elapsed)
            self._transactions += 1
            self._records += len(rows)
        if self.on_commit is not None:
            try:
                self.on_commit(elapsed)
            except Exception:
                log.exception("audit writer on_commit hook failed")

    def _replay_spool(self) -> None:
        if self.spool is None or not self.spool.has_records():
            self._spool_backlog = 0
            return
        try:
            replayed = self.spool.replay(self._insert)
        except AuditUnavailable as exc:
            self._spool_backlog = self.spool.count()
            log.warning(
                "audit database still unavailable, %d records spooled: %s", self._spool_backlog, exc
            )
            return
        self._spool_backlog = 0
        log.warning("audit spool %s replayed: %d records", self.spool.path, replayed)

    def _commit(self, rows: list[tuple[str, bytes]]) -> None:
        if self.spool is not None and self._spool_backlog:
            self._replay_spool()  # older records first, while the database is reachable
        if self.spool is not None and self._spool_backlog:
            self._spool(rows, "the database is unavailable and the spool is not yet replayed")
            return
        try:
            self._insert(rows)
        except AuditUnavailable as exc:
            if self.spool is None:
                raise
            self._spool(rows, str(exc))

    def _spool(self, rows: list[tuple[str, bytes]], why: str) -> None:
        assert self.spool is not None
        self.spool.append([body for _, body in rows])
        self._spooled += len(rows)
        self._spool_backlog += len(rows)
        log.warning(
            "audit database unavailable, %d records spooled to %s: %s",
            len(rows),
            self.spool.path,
            why,
        )
