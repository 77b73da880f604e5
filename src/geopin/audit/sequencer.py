"""The sequencer: moves pending records into the Merkle log and signs checkpoints.

Any number of writers (processes, hosts) insert into ``audit_pending``. One sequencer at a time
(a PostgreSQL transaction-scoped advisory lock; on SQLite a lock file beside the database) takes
pending rows in pending order, gives them contiguous sequence numbers, stores their flat
columns, rules and every newly completed Merkle node, and deletes them from pending. Every
router process runs one in the background (whoever gets the lock does the work, the others
return at once); ``geopin audit sequence`` runs one on demand.

On PostgreSQL a batch is one transaction. On SQLite the writers' records wait in the inbox, a
file of their own (``geopin.audit.inbox``): a batch takes them with a read, is stored a few
records per write transaction of the log's file (``geopin.audit.batch``), and what the log
holds is swept from the inbox now and then; the background work runs at the lowest scheduling
priority: the request path never waits for the log's lock, nor long for the inbox's or the
CPU.

Every ``checkpoint_every`` records or ``checkpoint_interval_s`` seconds the tree head is signed,
after checking it is consistent with the previous signed checkpoint: a sequencer refuses, loudly,
to sign a tree that does not extend what it signed before. The note is stored in the database and
then appended to the external checkpoint file, outside the database's reach.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from geopin.audit import merkle
from geopin.audit.batch import Batch, apply, build, id_time, plan, read, store_in_chunks
from geopin.audit.checkpoint import Checkpoint, SigningKey
from geopin.audit.checkpoint_file import CheckpointFile, TornEntryError
from geopin.audit.db import WriteGate, sqlite_write_gate, translate_errors, write_connection
from geopin.audit.inbox import Sweep, ensure, inbox_engine, insert, waiting
from geopin.audit.journal import journal_dir, recover
from geopin.audit.lock import FileLock, background_priority, low_priority
from geopin.audit.records import format_time
from geopin.audit.schema import checkpoints, pending
from geopin.audit.store import (
    StoredCheckpoint,
    fetch_nodes,
    latest_checkpoint,
    load_frontier,
    node_reader,
)
from geopin.errors import AuditError, VerificationError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Per schema, so two audit logs in one PostgreSQL database never wait on each other.
_PG_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.geopin-seq'))")
_PG_LOCK_WAIT = sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.geopin-seq'))")


@dataclass(frozen=True)
class SequenceResult:
    sequenced: int  # records given a sequence number
    duplicates: int  # pending records already sequenced (a replayed spool), dropped
    tree_size: int
    checkpoint: Checkpoint | None  # the checkpoint signed in this run, if any
    locked_out: bool = False  # another sequencer held the lock


class Sequencer:
    def __init__(
        self,
        engine: Engine,
        *,
        signing_key: SigningKey | None = None,
        checkpoint_file: CheckpointFile | str | Path | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        batch_size: int = 5000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_checkpoint: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_checkpoint`` is called with True after each checkpoint is signed, stored and
        appended to the checkpoint file, with False when one that was due could not be; what
        it raises is logged, never passed on."""
        self.engine = engine
        self.on_checkpoint = on_checkpoint
        self.signing_key = signing_key
        self.checkpoint_file = (
            CheckpointFile(checkpoint_file)
            if isinstance(checkpoint_file, str | Path)
            else checkpoint_file
        )
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.batch_size = batch_size
        self.clock = clock
        self._file_lock = _file_lock(engine)
        self._gate = sqlite_write_gate(engine) or WriteGate()
        self._inbox = inbox_engine(engine)
        self._inbox_id: str | None = None  # its identity, read at each run
        self._inbox_mark = 0  # how far into it the log went after this sequencer's last batch
        self._inbox_gate = sqlite_write_gate(self._inbox) if self._inbox is not None else None
        self._sweep = (
            Sweep(self._inbox, self._inbox_gate or WriteGate()) if self._inbox is not None else None
        )
        # Router processes' journals, beside the database (SQLite): the ended ones' are moved
        # into the inbox here.
        database = engine.url.database
        self._journals = journal_dir(database) if self._inbox is not None and database else None
        self._storer: ThreadPoolExecutor | None = None
        self._signing = False  # a checkpoint is being signed in the current transaction
        self._pending_since: float | None = None  # oldest record seen pending, not yet taken
        self._last_wait_s = 0.0  # how long the oldest record taken by the last run had waited

    def sequencing_lag_s(self) -> float:
        """How far behind sequencing is, in seconds: the age of the oldest record the last run
        saw pending and could not take (locked out, failed), else how long the oldest record
        it took had been waiting. Cheap: no database access."""
        if self._pending_since is not None:
            return max(0.0, time.time() - self._pending_since)
        return self._last_wait_s

    def run_once(self, *, force_checkpoint: bool = False, wait: bool = False) -> SequenceResult:
        """Sequence everything pending now, batch by batch; sign a checkpoint when one is due
        (or whenever the tree grew, with ``force_checkpoint``). ``wait`` blocks on another
        sequencer's lock instead of leaving the work to it."""
        if self._file_lock is not None and not self._file_lock.acquire(wait=wait):
            self._observe_pending()
            return SequenceResult(0, 0, -1, None, True)
        try:
            self._recover_journals()
            result = self._run_batches(force_checkpoint, wait)
            self._sweep_inbox(now=force_checkpoint)
        finally:
            if self._file_lock is not None:
                self._file_lock.release()
        if self._file_lock is not None and (result.sequenced or result.checkpoint):
            self._checkpoint_wal()
        return result

    def _run_batches(self, force_checkpoint: bool, wait: bool) -> SequenceResult:
        sequenced = duplicates = 0
        signed: Checkpoint | None = None
        first_wait: float | None = None
        while True:
            self._signing = False
            try:
                with translate_errors("sequencing audit records"):
                    outcome: tuple[Batch, tuple[Checkpoint, str] | None] | None
                    if self._file_lock is not None:
                        outcome = self._sqlite_batch(force_checkpoint)
                    else:
                        outcome = self._locked_batch(wait, force_checkpoint)
                if outcome is None:
                    return SequenceResult(sequenced, duplicates, -1, signed, True)
                batch, note = outcome
                done, dropped, size, oldest = batch.counts()
                final = done + dropped < self.batch_size
                if note is not None:
                    self._publish(note[1])
            except AuditError:
                if self._signing:
                    self._checkpoint_done(False)
                self._observe_pending()
                raise
            if first_wait is None and oldest is not None:
                first_wait = max(0.0, time.time() - oldest)
            sequenced += done
            duplicates += dropped
            if note is not None:
                signed = note[0]
                self._checkpoint_done(True)
            if final:
                self._pending_since = None
                self._last_wait_s = first_wait or 0.0
                return SequenceResult(sequenced, duplicates, size, signed)

    def _recover_journals(self) -> None:
        """The records of router processes that ended before moving their journals into the
        inbox (``geopin.audit.journal.recover``), into the inbox: sequenced in this run."""
        if self._journals is None:
            return
        assert self._inbox is not None and self._inbox_gate is not None
        inbox, gate = self._inbox, self._inbox_gate
        try:  # what fails stays in the files for the next run; the rest is sequenced anyway
            with translate_errors("recovering audit journals"):
                recover(self._journals, lambda rows: insert(inbox, gate, rows))
        except (AuditError, OSError) as exc:
            log.error("audit journals in %s not recovered, will retry: %s", self._journals, exc)

    def _sweep_inbox(self, *, now: bool) -> None:
        """Delete what the log holds from the inbox, when that is due (``inbox.Sweep``)."""
        if self._sweep is None or self._inbox_id is None:
            return
        identity, mark = self._inbox_id, self._inbox_mark
        if self._sweep.due(identity, mark, now=now):
            with translate_errors("sweeping the audit inbox"):
                self._on_storer(self._sweep.run, identity, mark)

    def _observe_pending(self) -> None:
        """Note the oldest pending record's time for ``sequencing_lag_s`` (one indexed row)."""
        try:
            with self.engine.connect() as conn:
                self._pending_since = _oldest_pending(conn)
        except sa.exc.SQLAlchemyError:
            pass  # the lag stays as last seen; the failure itself is reported elsewhere

    def _checkpoint_done(self, ok: bool) -> None:
        if self.on_checkpoint is None:
            return
        try:
            self.on_checkpoint(ok)
        except Exception:
            log.exception("audit sequencer on_checkpoint hook failed")

    async def run(self, stop: asyncio.Event, *, poll_interval_s: float = 0.25) -> None:
        """Sequence in the background until ``stop`` is set, then make one last pass that waits
        for the lock and signs a checkpoint over everything (set ``stop`` after the writers have
        flushed). Failures are logged, not raised, except a refused checkpoint (a tree that
        does not extend the signed one).

        The work runs in a thread of the lowest scheduling priority, so the request path's
        threads on the same core are never kept waiting for the CPU by it; only the short
        write transactions run at normal priority, in a second thread, since the audit writer
        may be waiting for the write gate they hold."""
        planner = ThreadPoolExecutor(
            1, thread_name_prefix="geopin-sequencer", initializer=background_priority
        )
        self._storer = ThreadPoolExecutor(
            1, thread_name_prefix="geopin-sequencer-store", initializer=low_priority
        )
        try:
            while not stop.is_set():
                await self._pass(planner, wait=False, force_checkpoint=False)
                try:  # no task of its own for the wait, as wait_for() would make
                    async with asyncio.timeout(poll_interval_s):
                        await stop.wait()
                except TimeoutError:
                    pass
            await self._pass(planner, wait=True, force_checkpoint=True)
        finally:
            storer, self._storer = self._storer, None
            await asyncio.to_thread(planner.shutdown)
            await asyncio.to_thread(storer.shutdown)

    async def _pass(self, planner: Executor, *, wait: bool, force_checkpoint: bool) -> None:
        run = functools.partial(self.run_once, wait=wait, force_checkpoint=force_checkpoint)
        try:
            await asyncio.get_running_loop().run_in_executor(planner, run)
        except VerificationError:
            log.critical("audit sequencer stopped: refusing to sign", exc_info=True)
            raise
        except AuditError as exc:
            log.error("audit sequencing failed, will retry: %s", exc)

    def _publish(self, note: str) -> None:
        if self.checkpoint_file is None:
            return
        try:
            try:
                self.checkpoint_file.append(note)
            except TornEntryError:
                # A crash during an earlier append; that checkpoint is in the database, and
                # the file can take no entry after a partial one.
                removed = self.checkpoint_file.discard_torn_tail()
                log.warning(
                    "checkpoint file %s ended in an incomplete entry, removed: %r",
                    self.checkpoint_file.path,
                    removed,
                )
                self.checkpoint_file.append(note)
        except (OSError, ValueError, AuditError) as exc:
            # Stored and signed in the database already; the next checkpoint is appended again.
            # Not a VerificationError: that would stop the sequencer as a refusal to sign does.
            raise AuditError(
                f"checkpoint signed but not appended to {self.checkpoint_file}: {exc}"
            ) from exc

    # ---- one transaction ----------------------------------------------------------------

    @staticmethod
    def _lock(conn: Connection, wait: bool) -> bool:
        if conn.dialect.name != "postgresql":
            return True  # BEGIN IMMEDIATE already holds SQLite's single write lock
        if wait:
            conn.execute(_PG_LOCK_WAIT)
            return True
        return bool(conn.scalar(_PG_LOCK))

    def _locked_batch(
        self, wait: bool, force: bool
    ) -> tuple[Batch, tuple[Checkpoint, str] | None] | None:
        """PostgreSQL: one transaction under the advisory lock (None: another sequencer has
        it). Writers are not held up: their inserts take no lock this transaction holds."""
        with write_connection(self.engine) as conn, conn.begin():
            if not self._lock(conn, wait):
                self._pending_since = _oldest_pending(conn)
                return None
            batch = plan(conn, self.batch_size)
            apply(conn, batch)
            final = sum(batch.counts()[:2]) < self.batch_size
            return batch, self._maybe_checkpoint(conn, batch.new_size, force and final)

    def _sqlite_batch(self, force: bool) -> tuple[Batch, tuple[Checkpoint, str] | None]:
        """SQLite, with the lock file held: the reads happen in one read transaction, which
        never blocks the audit writer, and the rows are made after it ends (a reader that
        stays, at the lowest priority on a busy core, keeps the WAL from being copied past
        it); SQLite's single write lock is taken only to store the rows (and sign, when a
        checkpoint is due)."""
        assert self._inbox is not None
        self._inbox_id = ensure(self._inbox)
        with self.engine.connect() as conn, conn.begin():
            batch, bodies, frontier = read(conn, self.batch_size, (self._inbox, self._inbox_id))
            previous = latest_checkpoint(conn) if self.signing_key is not None else None
            final = sum(batch.counts()[:2]) < self.batch_size
            due = self.signing_key is not None and self._checkpoint_due(
                previous, batch.new_size, force and final
            )
            if due and previous is not None:
                # Nothing is appended to a log that no longer extends what was signed.
                self._signing = True
                if previous.size > batch.size:
                    raise VerificationError(
                        f"refusing to sign: the log has {batch.size} records but checkpoint "
                        f"{previous.size} was already signed (the log was truncated)"
                    )
                stored_root = load_frontier(conn, batch.size).root()
                self._check_extends(conn, previous.note, batch.size, stored_root)
        build(batch, bodies, frontier)  # the CPU work, with the read transaction ended
        if batch.pending_ids or batch.duplicate_ids or batch.inbox_rows:
            self._on_storer(store_in_chunks, self.engine, self._gate, batch)
        self._inbox_mark = batch.inbox_mark
        if not due:
            return batch, None
        return batch, self._on_storer(self._sign_sqlite, batch.new_size, force and final)

    def _sign_sqlite(self, size: int, force: bool) -> tuple[Checkpoint, str] | None:
        with self._gate.background(), write_connection(self.engine) as conn, conn.begin():
            return self._maybe_checkpoint(conn, size, force)

    def _on_storer(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` in the normal-priority thread when there is one (see ``run``)."""
        if self._storer is None:
            return fn(*args)
        return self._storer.submit(fn, *args).result()

    def _checkpoint_wal(self) -> None:
        """A PASSIVE WAL checkpoint after a run: it never blocks the writer."""
        try:
            with self.engine.connect() as conn:
                driver: Any = conn.connection.dbapi_connection
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sa.exc.SQLAlchemyError as exc:
            log.debug("audit WAL checkpoint failed: %s", exc)

    def _maybe_checkpoint(
        self, conn: Connection, size: int, force: bool
    ) -> tuple[Checkpoint, str] | None:
        if self.signing_key is None:
            return None
        previous = latest_checkpoint(conn)
        if not self._checkpoint_due(previous, size, force):
            return None
        self._signing = True
        new_root = load_frontier(conn, size).root()
        if previous is not None:
            self._check_extends(conn, previous.note, size, new_root)
        checkpoint = Checkpoint(origin=self.signing_key.name, size=size, root=new_root)
        note = self.signing_key.sign(checkpoint)
        conn.execute(
            checkpoints.insert().values(
                size=size, root=new_root, note=note, created_at=format_time(self.clock())
            )
        )
        return checkpoint, note

    def _checkpoint_due(self, previous: StoredCheckpoint | None, size: int, force: bool) -> bool:
        if size == 0:
            return False
        if previous is None:
            return True
        if size <= previous.size:
            if size < previous.size:
                self._signing = True
                raise VerificationError(
                    f"refusing to sign: the log has {size} records but checkpoint "
                    f"{previous.size} was already signed (the log was truncated)"
                )
            return False
        grown = size - previous.size
        age = (self.clock() - _parse_time(previous.created_at)).total_seconds()
        return force or grown >= self.checkpoint_every or age >= self.checkpoint_interval_s

    def _check_extends(
        self, conn: Connection, previous_note: str, size: int, new_root: bytes
    ) -> None:
        assert self.signing_key is not None
        try:
            old = self.signing_key.verifier().open(previous_note)
        except VerificationError as exc:
            raise VerificationError(
                f"refusing to sign: the last stored checkpoint does not verify: {exc}"
            ) from exc
        keys = merkle.nodes_needed_for_consistency(old.size, size)
        proof = merkle.consistency_proof(old.size, size, node_reader(fetch_nodes(conn, keys)))
        if not merkle.verify_consistency(old.size, size, old.root, new_root, proof):
            raise VerificationError(
                f"refusing to sign: the tree of size {size} is not consistent with the signed "
                f"checkpoint of size {old.size} (the log was rewritten); run `geopin audit verify`"
            )


def _file_lock(engine: Engine) -> FileLock | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return None
    return FileLock(f"{database}-sequencer.lock")


def _oldest_pending(conn: Connection) -> float | None:
    found = [
        id_time(first) or time.time()
        for first in (
            conn.scalar(sa.select(pending.c.record_id).order_by(pending.c.id).limit(1)),
            waiting(conn)[1],
        )
        if first is not None
    ]
    return min(found, default=None)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
