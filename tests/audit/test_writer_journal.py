"""AuditWriter with a journal (SQLite, ``synchronous=NORMAL``): a request's records are kept by
one write to the process's journal and moved into the inbox by the writer's thread; none is
lost when the database refuses them or the process is killed."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest
import sqlalchemy as sa
from audit_factories import make_record
from test_writer import killed_after

from audit_pending import pending_ids
from geopin.audit import db as db_module
from geopin.audit.db import create_audit_engine
from geopin.audit.inbox import inbox_path
from geopin.audit.journal import journal_dir, waiting
from geopin.audit.migrate import upgrade
from geopin.audit.records import encode
from geopin.audit.schema import records as records_table
from geopin.audit.sequencer import Sequencer
from geopin.audit.store import pending_count
from geopin.audit.writer import AuditWriter
from geopin.errors import AuditUnavailable


def _encoded(n: int) -> tuple[str, bytes]:
    record = make_record(n)
    return record["id"], encode(record)


def _inbox_ids(engine) -> list[str]:
    inbox = sqlite3.connect(inbox_path(engine))
    try:
        return [row[0] for row in inbox.execute("SELECT record_id FROM audit_pending ORDER BY id")]
    finally:
        inbox.close()


def _journal(engine):
    return journal_dir(engine.url.database)


def test_a_commit_is_kept_in_the_journal_at_once_and_moved_in_by_the_writers_thread(
    sqlite_engine,
):
    decision, outcome = _encoded(1), _encoded(2)

    async def main():
        writer = AuditWriter(sqlite_engine, linger_s=30.0)
        await writer.start()
        await writer.commit(*decision)
        writer.submit(*outcome)
        kept = (_inbox_ids(sqlite_engine), waiting(_journal(sqlite_engine)), writer.queue_depth)
        with sqlite_engine.connect() as conn:
            counted = pending_count(conn)
        await writer.close()
        return kept, counted, writer.stats()

    (in_inbox, journaled, depth), counted, stats = asyncio.run(main())
    assert in_inbox == [] and journaled == 2 and depth == 2  # nothing committed yet...
    assert counted == 2  # ...and a reader counts them as pending all the same
    assert _inbox_ids(sqlite_engine) == [decision[0], outcome[0]]  # one commit, at close
    assert stats.transactions == 1 and stats.queue_depth == 0
    assert list(_journal(sqlite_engine).iterdir()) == []  # a clean close leaves nothing


def test_journaled_records_reach_the_inbox_within_linger_s(sqlite_engine):
    async def main():
        writer = AuditWriter(sqlite_engine, linger_s=0.02)
        await writer.start()
        for n in range(5):
            await writer.commit(*_encoded(n))
        deadline = time.monotonic() + 5
        while len(_inbox_ids(sqlite_engine)) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        found = (len(_inbox_ids(sqlite_engine)), waiting(_journal(sqlite_engine)))
        await writer.close()
        return found

    assert asyncio.run(main()) == (5, 0)


def test_full_synchronous_commits_before_returning_and_keeps_no_journal(tmp_path):
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'full.db'}", sqlite_synchronous="FULL")
    upgrade(engine)
    decision = _encoded(1)

    async def main():
        writer = AuditWriter(engine, linger_s=30.0)
        await writer.start()
        await writer.commit(*decision)  # an fsync'd commit: a write(2) would keep less
        seen = _inbox_ids(engine)
        await writer.close()
        return seen

    try:
        assert asyncio.run(main()) == [decision[0]]
        assert not _journal(engine).exists()
    finally:
        engine.dispose()


def test_while_the_inbox_refuses_records_they_wait_in_the_journal_and_requests_fail_closed(
    tmp_path, monkeypatch, caplog
):
    """Another process holds the inbox's write lock: the records already journaled stay there
    and are retried, new decisions are refused (AuditUnavailable: the router answers 503) and
    outcomes are still kept; once the lock is gone everything is in, each record once."""
    monkeypatch.setattr(db_module, "_BUSY_TIMEOUT_S", 0.05)  # give up on a held lock quickly
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    first, refused, outcome, later = _encoded(1), _encoded(2), _encoded(3), _encoded(4)

    async def main():
        writer = AuditWriter(engine, linger_s=0.01, retry_interval_s=0.05)
        await writer.start()
        holder = sqlite3.connect(inbox_path(engine), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the other process's long write transaction
        await writer.commit(*first)  # kept in the journal: the request may go on
        deadline = time.monotonic() + 5
        while writer._failing is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with pytest.raises(AuditUnavailable, match="not taking records"):
            await writer.commit(*refused)
        writer.submit(*outcome)  # a response has gone: its outcome is kept all the same
        assert waiting(_journal(engine)) == 2
        holder.execute("ROLLBACK")
        holder.close()
        deadline = time.monotonic() + 5
        while len(_inbox_ids(engine)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await writer.commit(*later)  # accepted again once a commit went through
        await writer.close()

    try:
        with caplog.at_level(logging.WARNING, logger="geopin.audit.writer"):
            asyncio.run(main())
        assert _inbox_ids(engine) == [first[0], outcome[0], later[0]]
        assert waiting(_journal(engine)) == 0
        # The failure is told once, with what was kept, and so is the recovery.
        failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 1 and "kept in the journal" in failed[0], failed
        assert "database is locked" in failed[0]
        assert "takes records again" in caplog.text
    finally:
        engine.dispose()


def test_records_left_at_close_stay_in_the_journal_for_the_sequencer(tmp_path, monkeypatch):
    monkeypatch.setattr(db_module, "_BUSY_TIMEOUT_S", 0.05)
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(engine)
    ids = [_encoded(n) for n in range(3)]

    async def main():
        writer = AuditWriter(engine, linger_s=30.0)
        await writer.start()
        holder = sqlite3.connect(inbox_path(engine), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        for record in ids:
            await writer.commit(*record)
        await writer.close()  # its last commit fails: the journal is kept
        holder.execute("ROLLBACK")
        holder.close()

    try:
        asyncio.run(main())
        assert waiting(_journal(engine)) == 3 and _inbox_ids(engine) == []
        assert Sequencer(engine).run_once(wait=True).sequenced == 3
        with engine.connect() as conn:
            stored = list(conn.scalars(sa.select(records_table.c.record_id)))
            assert sorted(stored) == sorted(rid for rid, _ in ids)
            assert pending_count(conn) == 0
        assert list(_journal(engine).iterdir()) == []
    finally:
        engine.dispose()


def test_a_journal_that_cannot_be_made_stops_the_writer_unless_a_spool_keeps_records(
    sqlite_engine, tmp_path, caplog
):
    _journal(sqlite_engine).write_text("in the way")  # a file where the directory goes

    async def start(**options):
        writer = AuditWriter(sqlite_engine, **options)
        await writer.start()
        await writer.commit(*_encoded(1))
        await writer.close()

    with pytest.raises(AuditUnavailable, match="audit journal .*-journals"):
        asyncio.run(start())
    asyncio.run(start(spool=tmp_path / "spool"))  # commits each record instead
    assert "audit journal unusable" in caplog.text
    assert len(pending_ids(sqlite_engine)) == 1


@pytest.mark.slow
def test_journaled_records_survive_sigkill_and_are_sequenced_exactly_once(sqlite_engine):
    acknowledged = killed_after(str(sqlite_engine.url), "commit", 2000)
    assert set(acknowledged) <= set(pending_ids(sqlite_engine))  # inbox, or journal
    left = waiting(_journal(sqlite_engine))
    result = Sequencer(sqlite_engine).run_once(wait=True)
    with sqlite_engine.connect() as conn:
        stored = list(conn.scalars(sa.select(records_table.c.record_id)))
        assert pending_count(conn) == 0
    assert set(acknowledged) <= set(stored) and len(stored) == len(set(stored))
    assert result.sequenced == len(stored)
    assert list(_journal(sqlite_engine).iterdir()) == []
    print(f"{left} of {len(acknowledged)} acknowledged records were only in the journal")
