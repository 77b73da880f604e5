"""The sequencer: moves pending records into the Merkle log and signs checkpoints.

Any number of writers (processes, hosts) insert into ``audit_pending``. One sequencer at a time
(a PostgreSQL transaction-scoped advisory lock, SQLite's ``BEGIN IMMEDIATE`` write lock) takes
pending rows in pending order and, in one transaction, gives them contiguous sequence numbers,
stores their flat columns, rules and every newly completed Merkle node, and deletes them from
pending. Every router process runs one in the background (whoever gets the lock does the work);
``geopin audit sequence`` runs one on demand.

Every ``checkpoint_every`` records or ``checkpoint_interval_s`` seconds the tree head is signed,
after checking it is consistent with the previous signed checkpoint: a sequencer refuses, loudly,
to sign a tree that does not extend what it signed before. The note is stored in the database and
then appended to the external checkpoint file, outside the database's reach.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from geopin.audit import merkle
from geopin.audit.checkpoint import Checkpoint, CheckpointFile, SigningKey, TornEntryError
from geopin.audit.db import translate_errors, write_connection
from geopin.audit.lock import FileLock
from geopin.audit.records import flat_columns, format_time, rule_ids
from geopin.audit.schema import checkpoints, nodes, pending, record_rules, records
from geopin.audit.store import (
    chunks,
    fetch_nodes,
    latest_checkpoint,
    load_frontier,
    node_reader,
    tree_size,
)
from geopin.errors import AuditError, VerificationError

log = logging.getLogger(__name__)

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
            return self._run_batches(force_checkpoint, wait)
        finally:
            if self._file_lock is not None:
                self._file_lock.release()

    def _run_batches(self, force_checkpoint: bool, wait: bool) -> SequenceResult:
        sequenced = duplicates = 0
        signed: Checkpoint | None = None
        first_wait: float | None = None
        while True:
            self._signing = False
            try:
                with translate_errors("sequencing audit records"):
                    with write_connection(self.engine) as conn:
                        with conn.begin():
                            if not self._lock(conn, wait):
                                self._pending_since = _oldest_pending(conn)
                                return SequenceResult(sequenced, duplicates, -1, signed, True)
                            done, dropped, size, oldest = self._sequence_batch(conn)
                            final = done + dropped < self.batch_size
                            note = self._maybe_checkpoint(conn, size, force_checkpoint and final)
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
        does not extend the signed one)."""
        while not stop.is_set():
            await self._pass(wait=False, force_checkpoint=False)
            try:
                await asyncio.wait_for(stop.wait(), poll_interval_s)
            except TimeoutError:
                pass
        await self._pass(wait=True, force_checkpoint=True)

    async def _pass(self, *, wait: bool, force_checkpoint: bool) -> None:
        try:
            await asyncio.to_thread(self.run_once, wait=wait, force_checkpoint=force_checkpoint)
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

    def _sequence_batch(self, conn: Connection) -> tuple[int, int, int, float | None]:
        """(records sequenced, duplicates dropped, the new tree size, the Unix time of the
        oldest record taken if its id tells it)."""
        rows = conn.execute(
            sa.select(pending.c.id, pending.c.record_id, pending.c.body)
            .order_by(pending.c.id)
            .limit(self.batch_size)
        ).all()
        size = tree_size(conn)
        if not rows:
            return 0, 0, size, None
        ids = [row.record_id for row in rows]
        seen: set[str] = set()
        for part in chunks(ids):
            seen.update(
                conn.scalars(sa.select(records.c.record_id).where(records.c.record_id.in_(part)))
            )
        fresh = [row for row in rows if row.record_id not in seen]
        if seen:
            log.info("audit sequencer: %d pending records were already sequenced", len(seen))
        frontier = load_frontier(conn, size)
        bodies = [bytes(row.body) for row in fresh]
        _, completed = merkle.append(frontier, [merkle.leaf_hash(b) for b in bodies])
        record_rows: list[dict[str, object]] = []
        rule_rows: list[dict[str, object]] = []
        for offset, body in enumerate(bodies):
            seq = size + offset
            try:
                record = json.loads(body)
            except ValueError as exc:  # the writer only enqueues canonical JSON
                raise AuditError(f"pending audit record is not JSON: {body[:80]!r}") from exc
            record_rows.append(
                {"seq": seq, "record_id": record["id"], "body": body, **flat_columns(record)}
            )
            rule_rows.extend({"seq": seq, "rule_id": rule} for rule in rule_ids(record))
        if record_rows:
            conn.execute(records.insert(), record_rows)
        if rule_rows:
            conn.execute(record_rules.insert(), rule_rows)
        if completed:
            conn.execute(
                nodes.insert(), [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in completed]
            )
        pending_ids = [row.id for row in rows]
        for part in chunks(pending_ids):
            conn.execute(pending.delete().where(pending.c.id.in_(part)))
        return len(fresh), len(seen), size + len(fresh), _id_time(rows[0].record_id)

    def _maybe_checkpoint(
        self, conn: Connection, size: int, force: bool
    ) -> tuple[Checkpoint, str] | None:
        if self.signing_key is None or size == 0:
            return None
        previous = latest_checkpoint(conn)
        if previous is not None:
            if size <= previous.size:
                if size < previous.size:
                    self._signing = True
                    raise VerificationError(
                        f"refusing to sign: the log has {size} records but checkpoint "
                        f"{previous.size} was already signed (the log was truncated)"
                    )
                return None
            grown = size - previous.size
            age = (self.clock() - _parse_time(previous.created_at)).total_seconds()
            if not force and grown < self.checkpoint_every and age < self.checkpoint_interval_s:
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
    first = conn.scalar(sa.select(pending.c.record_id).order_by(pending.c.id).limit(1))
    if first is None:
        return None
    return _id_time(first) or time.time()


def _id_time(record_id: str) -> float | None:
    """The creation time a UUIDv7 record id carries (its first 48 bits are Unix ms)."""
    digits = record_id.replace("-", "")
    if len(digits) != 32 or digits[12] != "7":
        return None
    try:
        return int(digits[:12], 16) / 1000
    except ValueError:
        return None


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
