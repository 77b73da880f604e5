"""Retention: remove old record bodies while keeping the tree verifiable.

A prune clears the body, the flat columns (all but ``kind`` and ``ts``) and the rule rows of
records older than a date, and only of records already covered by a signed checkpoint. Leaf
hashes and Merkle nodes stay, so every checkpoint still verifies and ``geopin audit verify``
reports the pruned range rather than a failure. The prune is the one change ever made to a
sequenced record, and it is itself recorded: a ``prune`` record is written in the same
transaction, naming the cut-off, the checkpoint size it applied below and how many went.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from geopin.audit.db import translate_errors, write_connection
from geopin.audit.query import parse_bound
from geopin.audit.records import FLAT_KEYS, encode, prune_record
from geopin.audit.schema import record_rules, records
from geopin.audit.store import chunks, insert_pending, latest_checkpoint
from geopin.errors import AuditError

_PG_LOCK_WAIT = sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.geopin-seq'))")


@dataclass(frozen=True)
class PruneResult:
    before: str
    seq_end: int  # records at or above this seq were not considered (not yet checkpointed)
    pruned: int
    record_id: str  # the prune record, pending until the next sequencing


def prune(
    engine: Engine, before: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> PruneResult:
    """Prune records with time before ``before`` (an ISO date or datetime)."""
    cutoff = parse_bound(before, "before")
    with translate_errors("pruning the audit log"):
        with write_connection(engine) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(_PG_LOCK_WAIT)  # not while a sequencer is appending
            checkpoint = latest_checkpoint(conn)
            if checkpoint is None:
                raise AuditError(
                    "nothing to prune: no signed checkpoint yet, and only checkpointed records "
                    "are pruned (run `geopin audit sequence --key ... --checkpoint` first)"
                )
            doomed = list(
                conn.scalars(
                    sa.select(records.c.seq).where(
                        records.c.seq < checkpoint.size,
                        records.c.ts < cutoff,
                        records.c.body.is_not(None),
                        records.c.kind != "prune",
                    )
                )
            )
            cleared = {"body": None, **{key: None for key in FLAT_KEYS}}
            for part in chunks(doomed):
                conn.execute(records.update().where(records.c.seq.in_(part)).values(cleared))
                conn.execute(record_rules.delete().where(record_rules.c.seq.in_(part)))
            record = prune_record(
                before=cutoff, seq_end=checkpoint.size, pruned=len(doomed), time=clock()
            )
            insert_pending(conn, [(record["id"], encode(record))])
    return PruneResult(cutoff, checkpoint.size, len(doomed), record["id"])
