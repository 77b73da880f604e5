"""AuditWriter: durable, group-committed audit writes for the asyncio router.

``await writer.record(record)`` returns only once the record is committed in the pending table
(on SQLite the inbox's, a file of its own beside the database: ``geopin.audit.inbox``), or
fsync'd to the opt-in spool. Calls that arrive while a commit is running wait for the next
one, which takes them all in one transaction: under load a transaction carries many records,
at rest a record waits for just its own commit. All database work runs in one thread of the
writer's own, so the event loop never blocks and SQLite sees a single writer connection per
process.

The hand-off is kept short because at concurrency 1 it is most of the cost: ``record()``
puts the record on a ``SimpleQueue`` the thread blocks on, the thread commits what it finds and
settles the callers' futures with one ``call_soon_threadsafe``. On SQLite the insert goes
straight to the driver (no statement compiling per commit); the connection does not checkpoint
the WAL inside a commit (``wal_autocheckpoint=0``, which would put an fsync in some request's
path) and a second thread checkpoints it every ``wal_checkpoint_interval_s`` instead, PASSIVE,
which never blocks the writer. An in-process gate shared with the sequencer makes them queue
on a mutex rather than on SQLite's busy handler, which sleeps in steps of up to 100 ms.

A request's records (``commit()`` for its decision, ``submit()`` for its outcome) are, where a
commit would not reach the disk anyway (SQLite with ``synchronous=NORMAL``), appended to this
process's journal instead, which keeps them just as durably for one ``write(2)``
(``geopin.audit.journal``): the request goes on at once, with no lock and no hand-off, and the
writer's thread moves the journaled records into the inbox with its next commit, ``linger_s``
later at most. Elsewhere (PostgreSQL, SQLite ``FULL``) ``commit()`` returns once the writer's
thread has committed the record, and ``submit()`` queues an outcome nobody waits for, to join
the next commit: a request costs one commit, not two.

If the database cannot take records, ``record()`` and ``commit()`` raise ``AuditUnavailable``
(the router answers 503: it fails closed), unless a spool is configured: then the records go to
the spool and are replayed into the database, once, when it is back. Records already journaled
are never dropped: the writer's thread tries them again every ``retry_interval_s``, and if the
process ends first, the sequencer (in any process) recovers them from its journal.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from geopin.audit.db import (
    sqlite_synchronous,
    sqlite_write,
    sqlite_write_gate,
    translate_errors,
    write_connection,
)
from geopin.audit.inbox import INSERT_SQL as INBOX_INSERT
from geopin.audit.inbox import ensure, inbox_engine
from geopin.audit.journal import Journal, journal_dir
from geopin.audit.lock import background_priority
from geopin.audit.migrate import check_schema
from geopin.audit.records import encode
from geopin.audit.spool import Spool
from geopin.audit.store import insert_pending
from geopin.errors import AuditError, AuditUnavailable

log = logging.getLogger(__name__)

# The third member: the future its caller awaits; None when nobody waits; _JOURNALED when nobody
# waits and the record is in this process's journal (kept until committed, never dropped).
_Item = tuple[str, bytes, Any]
_JOURNALED = object()
_STOP = object()
_WAKE = object()  # commit what is lingering
_FINISH_CHECKPOINT = object()  # copy what the last WAL checkpoint left (see _checkpoint_wal)
_EMPTY_WAL = object()  # the same, waiting for other processes, and empty the WAL
_WAL_RESTART_FRAMES = 1000  # SQLite's default wal_autocheckpoint
_WAL_LIMIT_FRAMES = 8192  # 32 MiB of 4 KiB pages: other processes keep the WAL from restarting
_EMPTY_WAIT_MS = 200  # how long emptying the WAL waits for other processes' transactions


@dataclass(frozen=True)
class WriterStats:
    """A snapshot for metrics."""

    queue_depth: int  # records waiting for a commit, including the ones in flight
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
        wal_checkpoint_interval_s: float = 1.0,
        linger_s: float = 0.02,
        journal: bool = True,
    ) -> None:
        """``on_commit`` is called after each committed transaction with its duration in
        seconds, in the writer's thread; what it raises is logged, never passed on.
        ``journal``: keep a request's records in this process's journal where that is as
        durable as a commit (``geopin.audit.journal``); False commits them as ``record()``
        does."""
        self.engine = engine
        # Where the records go: on SQLite the inbox, on PostgreSQL the database itself.
        self._target = inbox_engine(engine) or engine
        self.on_commit = on_commit
        self.spool = Spool(spool) if isinstance(spool, str | Path) else spool
        self.max_batch = max_batch
        self.retry_interval_s = retry_interval_s
        self.wal_checkpoint_interval_s = wal_checkpoint_interval_s
        self.linger_s = linger_s
        self._check = check
        self._sqlite = engine.dialect.name == "sqlite"
        self._gate = sqlite_write_gate(self._target)
        # A journal where a commit is not flushed to the disk either (see geopin.audit.journal).
        self._journal_dir = (
            journal_dir(str(engine.url.database))
            if journal and sqlite_synchronous(engine) == "NORMAL" and engine.url.database
            else None
        )
        self._journal: Journal | None = None
        self._journal_done = 0  # journaled records committed, in order (the writer's thread)
        # Why the last commit failed, None once one succeeds (written by the writer's thread).
        self._failing: str | None = None
        self._retry_at = 0.0
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lingering: deque[_Item] = deque()  # appended by the loop, taken by the writer
        self._outbox: list[_Item] = []  # this turn of the loop's records, for the thread
        self._linger_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker_ended = False  # set by the writer's thread as it ends, however it ends
        self._checkpointer: threading.Thread | None = None
        self._wal_stuck = False  # the last attempt to empty the WAL was kept waiting
        self._stopping = threading.Event()
        self._conn: sa.Connection | None = None  # PostgreSQL
        self._raw: Any = None  # SQLite: the pool's connection, detached; and its driver's
        self._driver: Any = None
        self._running = False
        self._accepted = 0  # written by the event loop's thread only
        self._finished = 0  # written by the writer's thread only
        self._transactions = 0
        self._records = 0
        self._spooled = 0
        self._spool_backlog = 0
        self._latencies: deque[float] = deque(maxlen=1024)
        self._stats_lock = threading.Lock()  # stats() may be called from any thread

    async def start(self) -> None:
        if self._loop is not None:
            raise AuditError("AuditWriter already started")
        self._loop = asyncio.get_running_loop()
        if self._check or self._sqlite:
            try:
                if self._check:
                    await asyncio.to_thread(check_schema, self.engine)
                if self._sqlite:
                    await asyncio.to_thread(self._open_inbox)
            except AuditUnavailable as exc:
                if self.spool is None:
                    raise
                # Records can still be kept (spooled) and replayed once the database is back.
                log.warning("audit database unavailable at start, spooling: %s", exc)
        await asyncio.to_thread(self._replay_spool)
        if self._journal_dir is not None:
            await asyncio.to_thread(self._open_journal, self._journal_dir)
        self._worker_ended = False
        self._thread = threading.Thread(target=self._work, name="geopin-audit", daemon=True)
        self._thread.start()
        if self._sqlite and self.wal_checkpoint_interval_s > 0:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_wal, name="geopin-audit-wal", daemon=True
            )
            self._checkpointer.start()
        self._running = True

    def _open_inbox(self) -> None:
        with translate_errors(f"opening the audit inbox of {self.engine.url.database}"):
            ensure(self._target)

    def _open_journal(self, directory: Path) -> None:
        """Start this process's journal. Without one (the directory unusable) a spool still
        keeps records; else the writer cannot start."""
        journal = Journal(directory)
        try:
            journal.open()
        except AuditError as exc:
            if self.spool is None:
                raise AuditUnavailable(str(exc)) from exc
            log.warning("audit journal unusable, committing each record instead: %s", exc)
            return
        self._journal = journal

    async def record(self, record: Mapping[str, Any], *, linger: bool = False) -> None:
        """Commit ``record`` durably; raise AuditUnavailable if it cannot be kept anywhere.

        ``linger``: commit it with the next commit, or within ``linger_s``, rather than at once
        (for records no response waits on); it returns, as ever, once the record is committed.
        """
        self._check_running()
        body = encode(record)
        future: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        if linger:
            self._linger((record["id"], body, future))
        else:
            self._send((record["id"], body, future))
        await future

    async def commit(self, record_id: str, body: bytes) -> None:
        """Keep an encoded record (``records.encode``'s bytes) durably before returning: in the
        journal, or committed as ``record()`` does. Raises AuditError if it cannot be kept."""
        self._check_running()
        journal = self._journal
        if journal is not None:
            if self._failing is not None and self.spool is None:
                raise AuditUnavailable(f"the audit database is not taking records: {self._failing}")
            journal.append(body)
            self._linger((record_id, body, _JOURNALED))
            return
        future: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        self._send((record_id, body, future))
        await future

    def _send(self, item: _Item) -> None:
        """To the writer's thread, with the others of this turn of the event loop: one
        hand-off (and one wake-up of the thread) per turn, not per record."""
        self._accepted += 1
        self._outbox.append(item)
        if len(self._outbox) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._inbox.put(batch)

    def submit(self, record_id: str, body: bytes) -> None:
        """Queue an encoded record that nobody waits for (a request's outcome, written after
        its response has gone): journaled, or else it joins the next commit, ``linger_s``
        later at most. If it cannot be kept, the failure is logged with the record's id."""
        self._check_running()
        journal = self._journal
        if journal is None:
            self._linger((record_id, body, None))
            return
        try:
            journal.append(body)  # kept even while the database refuses records
        except AuditError as exc:
            log.error("audit record %s not recorded: %s", record_id, exc)
            return
        self._linger((record_id, body, _JOURNALED))

    def _check_running(self) -> None:
        if not self._running or self._loop is None or self._thread is None:
            raise AuditError("AuditWriter is not running (call start(), not after close())")
        if self._worker_ended:  # a flag, not Thread.is_alive(): this runs on every record
            raise AuditError("the audit writer's thread has stopped")

    def _linger(self, item: _Item) -> None:
        self._accepted += 1
        self._lingering.append(item)
        if self._linger_timer is None:
            assert self._loop is not None
            self._linger_timer = self._loop.call_later(self.linger_s, self._wake)

    def _wake(self) -> None:
        self._linger_timer = None
        if self._lingering:
            self._inbox.put(_WAKE)

    async def close(self) -> None:
        """Commit everything queued, then release the threads and the connections."""
        if not self._running or self._thread is None:
            return
        self._running = False
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._flush()
        self._inbox.put(_STOP)  # the last batch takes whatever is lingering too
        await asyncio.to_thread(self._thread.join)
        if self._journal is not None:
            left = len(self._lingering)
            if left:
                log.warning(
                    "%d audit records could not be committed and stay in the journal %s: the "
                    "sequencer moves them in once the database takes records again",
                    left,
                    self._journal.directory,
                )
            self._journal.close(keep=left > 0)
            self._journal = None
        self._stopping.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)

    @property
    def queue_depth(self) -> int:
        """Records accepted (``record``, ``commit``, ``submit``) and not yet committed (safe
        from any thread)."""
        return max(0, self._accepted - self._finished)

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

    # ---- the writer's thread ------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                try:
                    if not self._work_once():
                        return
                except Exception:  # a broken spool, say: log it, keep serving the queue
                    log.exception("audit writer: unexpected failure, continuing")
        finally:
            self._worker_ended = True
            self._disconnect()

    def _work_once(self) -> bool:
        """Commit one batch (waiting for one if none is queued); False once stopped."""
        retrying = self._failing is not None and bool(self._lingering)
        waits = [self.retry_interval_s] if self._spool_backlog else []
        if retrying:  # journaled records wait for their retry
            waits.append(max(0.0, self._retry_at - time.monotonic()))
        try:
            item = self._inbox.get(timeout=min(waits) if waits else None)
        except queue.Empty:
            self._replay_spool()
            if not retrying:
                return True
            item = _WAKE
        batch: list[_Item] = []
        stopped = False
        while True:
            if item is _STOP:
                stopped = True
                break
            if item is _FINISH_CHECKPOINT or item is _EMPTY_WAL:
                self._finish_checkpoint(empty=item is _EMPTY_WAL)
            elif type(item) is list:  # one turn's records (see _send)
                batch.extend(item)
            elif item is not _WAKE:
                batch.append(item)
            if len(batch) >= self.max_batch:
                break
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        lingering = self._lingering
        # After a failed commit the journaled records wait for the retry, not for every wake.
        due = stopped or self._failing is None or time.monotonic() >= self._retry_at
        while due and lingering and (stopped or len(batch) < self.max_batch):
            batch.append(lingering.popleft())
        if due and lingering:  # a full batch left some behind: they get the next commit
            self._inbox.put(_WAKE)
        if batch:
            self._commit_batch(batch)
        return not stopped

    def _commit_batch(self, batch: list[_Item]) -> None:
        # Until the commit returns, the batch counts as failed: nothing unwritten is acknowledged.
        error: BaseException | None = AuditError("audit write interrupted")
        try:
            self._commit([(rid, body) for rid, body, _ in batch])
            error = None
        except Exception as exc:  # every waiter hears about the failure
            error = exc if isinstance(exc, AuditError) else AuditError(f"audit write: {exc}")
        finally:
            journaled = [item for item in batch if item[2] is _JOURNALED]
            if error is None:
                if self._failing is not None:
                    log.warning("the audit database takes records again")
                self._failing = None
                if journaled and self._journal is not None:
                    self._journal_done += len(journaled)
                    self._journal.committed(self._journal_done)
            else:
                if self._failing is None:  # told once, not on every retry
                    kept = (
                        f" ({len(journaled)} kept in the journal, retried every "
                        f"{self.retry_interval_s:g}s)"
                        if journaled
                        else ""
                    )
                    log.error("audit commit of %d records failed%s: %s", len(batch), kept, error)
                self._failing = str(error)
                self._retry_at = time.monotonic() + self.retry_interval_s
                if journaled:  # kept, in their order, for the retry
                    self._lingering.extendleft(reversed(journaled))
                    batch = [item for item in batch if item[2] is not _JOURNALED]
            self._finished += len(batch)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_settle, batch, error)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                pass

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

    def _insert(self, rows: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        try:
            with translate_errors("writing audit records"):
                if self._sqlite:
                    self._insert_sqlite(rows)
                else:
                    conn = self._connection()
                    with conn.begin():
                        insert_pending(conn, rows)
        except AuditError:
            self._disconnect()  # a broken connection is not reused
            raise
        self._committed(len(rows), time.perf_counter() - started)

    def _committed(self, records: int, elapsed: float) -> None:
        with self._stats_lock:
            self._latencies.append(elapsed)
            self._transactions += 1
            self._records += records
        if self.on_commit is not None:
            try:
                self.on_commit(elapsed)
            except Exception:
                log.exception("audit writer on_commit hook failed")

    def _insert_sqlite(self, rows: list[tuple[str, bytes]]) -> None:
        driver = self._sqlite_driver()
        assert self._gate is not None
        with self._gate.foreground(), sqlite_write(driver):
            driver.executemany(INBOX_INSERT, rows)

    def _finish_checkpoint(self, *, empty: bool = False) -> None:
        """A PASSIVE checkpoint with no other writer of this process at work: it copies what
        the checkpointer's round left, so the WAL is all copied and the next commit restarts
        it (other processes' writers may still have written; the next round tries again).

        ``empty``: other processes' writers have kept the WAL from starting over for
        ``_WAL_LIMIT_FRAMES`` pages (several routers on one SQLite file, always writing; it
        grew by 80 MB every 10 s with two workers): a TRUNCATE checkpoint instead, which holds
        their commits back while it copies what is left (and for at most ``_EMPTY_WAIT_MS``
        while it waits for their transactions to end), then empties the file."""
        assert self._gate is not None
        try:
            with self._gate.foreground():
                driver = self._sqlite_driver()
                if not empty:
                    driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    return
                (waits,) = driver.execute("PRAGMA busy_timeout").fetchone()
                driver.execute(f"PRAGMA busy_timeout={_EMPTY_WAIT_MS}")
                try:
                    (busy, _, _) = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    driver.execute(f"PRAGMA busy_timeout={int(waits)}")
        except Exception as exc:
            log.debug("audit WAL checkpoint failed: %s", exc)
            return
        if busy and not self._wal_stuck:
            log.warning(
                "the audit WAL could not be emptied: another process kept a transaction open "
                "for more than %d ms; trying again every round",
                _EMPTY_WAIT_MS,
            )
        self._wal_stuck = bool(busy)

    def _sqlite_driver(self) -> Any:
        if self._driver is None:
            ensure(self._target)  # an inbox that could not be made at start, or was removed
            raw = self._target.raw_connection()
            raw.detach()  # its pragma below must not reach the pool's other users
            self._raw, self._driver = raw, raw.dbapi_connection
            self._driver.execute("PRAGMA wal_autocheckpoint=0")
        return self._driver

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = write_connection(self._target)
        return self._conn

    def _disconnect(self) -> None:
        for closing in (self._conn, self._raw):
            if closing is not None:
                try:
                    closing.close()
                except (sa.exc.SQLAlchemyError, OSError, ValueError):
                    pass
        self._conn = self._raw = self._driver = None

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

    # ---- the WAL checkpointer's thread ----------------------------------------------------

    def _checkpoint_wal(self) -> None:
        """PASSIVE checkpoints on a timer, so no commit pays for one. Under a steady stream of
        commits a checkpoint never finds the WAL all copied (more was written meanwhile), and
        SQLite starts the WAL over only when it is: it would grow without end. So once the WAL
        holds ``_WAL_RESTART_FRAMES`` pages (SQLite's own threshold), the writer's thread copies,
        under the write gate, the few written since the round (``_FINISH_CHECKPOINT``; with its
        fsyncs, the only checkpoint work that may hold a commit up, a millisecond or two every
        few seconds under load), and the next commit starts the WAL from its beginning."""
        background_priority()
        raw = None
        try:
            while not self._stopping.wait(self.wal_checkpoint_interval_s):
                try:
                    if raw is None:
                        raw = self._target.raw_connection()
                        raw.detach()
                    driver: Any = raw.dbapi_connection
                    _, frames, _ = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= _WAL_LIMIT_FRAMES:
                        self._inbox.put(_EMPTY_WAL)
                    elif frames >= _WAL_RESTART_FRAMES:
                        self._inbox.put(_FINISH_CHECKPOINT)
                except Exception as exc:  # the next round tries again; commits go on regardless
                    log.debug("audit WAL checkpoint failed: %s", exc)
                    if raw is not None:
                        raw.close()
                        raw = None
        finally:
            if raw is not None:
                raw.close()


def _settle(batch: list[_Item], error: BaseException | None) -> None:
    for record_id, _, future in batch:
        if future is _JOURNALED:  # committed (a failed one was kept for the retry)
            continue
        if future is None:  # submitted: nobody waits, so the failure is told here
            if error is not None:
                log.error("audit record %s not recorded: %s", record_id, error)
            continue
        if future.done():  # its caller was cancelled; the record is kept all the same
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
