"""The SQLite inbox: the writers' records in a file of their own, the log's mark, the sweep."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from typing import Any

import pytest
import sqlalchemy as sa
from audit_factories import add_pending, make_outcome, make_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_pending import pending_ids
from geopin.audit.db import create_audit_engine, sqlite_write_gate
from geopin.audit.inbox import Sweep, ensure, inbox_engine, inbox_path, read_mark
from geopin.audit.migrate import upgrade
from geopin.audit.schema import records
from geopin.audit.sequencer import Sequencer
from geopin.audit.store import pending_count
from geopin.audit.verify import verify_log


def _sequenced(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(records.c.record_id).order_by(records.c.seq)))


def _inbox_ids(engine) -> list[int]:
    with sqlite3.connect(inbox_path(engine)) as db:
        return [row[0] for row in db.execute("SELECT id FROM audit_pending ORDER BY id")]


def _identity(engine) -> str:
    inbox = inbox_engine(engine)
    return ensure(inbox)


def test_the_inbox_is_a_file_beside_the_database_and_postgres_has_none(sqlite_engine, tmp_path):
    assert inbox_path(sqlite_engine) == os.path.realpath(tmp_path / "audit.db") + "-pending"
    pg = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/x")
    assert inbox_path(pg) is None and inbox_engine(pg) is None


def test_ensure_creates_it_once_with_a_lasting_identity(sqlite_engine):
    inbox = inbox_engine(sqlite_engine)
    first = ensure(inbox)
    assert len(first) == 32 and ensure(inbox) == first  # the same file keeps its identity


def test_sequenced_rows_wait_above_the_mark_until_swept(sqlite_engine):
    batch = [make_record(n) for n in range(5)]
    add_pending(sqlite_engine, batch)
    assert pending_count_of(sqlite_engine) == 5
    result = Sequencer(sqlite_engine).run_once()  # not forced: the sweep is not due yet
    assert result.sequenced == 5 and _sequenced(sqlite_engine) == [r["id"] for r in batch]
    assert _inbox_ids(sqlite_engine) == [1, 2, 3, 4, 5]  # still there...
    with sqlite_engine.connect() as conn:
        assert read_mark(conn, _identity(sqlite_engine)) == 5  # ...but below the log's mark
        assert pending_count(conn) == 0
    more = [make_outcome(n) for n in range(2)]
    add_pending(sqlite_engine, more)
    result = Sequencer(sqlite_engine).run_once(force_checkpoint=True)  # a new sequencer: the mark
    assert result.sequenced == 2 and result.duplicates == 0  # nothing taken twice
    assert _inbox_ids(sqlite_engine) == [7]  # forced: swept, but for the newest row...
    assert pending_count_of(sqlite_engine) == 0  # ...which the log holds
    last = make_record(9)
    add_pending(sqlite_engine, [last])
    assert _inbox_ids(sqlite_engine) == [7, 8]  # so ids never go back
    assert Sequencer(sqlite_engine).run_once().sequenced == 1
    assert _sequenced(sqlite_engine) == [r["id"] for r in [*batch, *more, last]]


def pending_count_of(engine) -> int:
    with engine.connect() as conn:
        return pending_count(conn)


def test_the_sweep_deletes_only_what_the_log_holds_a_chunk_per_transaction(sqlite_engine):
    add_pending(sqlite_engine, [make_record(n) for n in range(10)])
    inbox = inbox_engine(sqlite_engine)
    identity = ensure(inbox)
    sweep = Sweep(inbox, sqlite_write_gate(inbox), every=4, interval_s=3600)
    sweep.chunk = 3
    assert not sweep.due(identity, 3) and sweep.due(identity, 4)
    assert sweep.due(identity, 1, now=True)
    assert sweep.run(identity, 7) == 7
    assert _inbox_ids(sqlite_engine) == [8, 9, 10]
    assert not sweep.due(identity, 7, now=True)  # nothing more below that mark
    assert not sweep.due(identity, 10)  # 3 behind: not yet
    assert sweep.run("another-inbox", 10) == 0  # a mark of another inbox deletes nothing
    assert _inbox_ids(sqlite_engine) == [8, 9, 10]
    assert sweep.run(identity, 10) == 2 and _inbox_ids(sqlite_engine) == [10]  # the newest stays


def test_a_replaced_inbox_starts_from_nothing(sqlite_engine):
    """The mark belongs to an inbox's identity: a new inbox's ids start again at 1, and none
    of its records is taken for one the log already holds."""
    first = [make_record(n) for n in range(4)]
    add_pending(sqlite_engine, first)
    Sequencer(sqlite_engine).run_once()
    path = inbox_path(sqlite_engine)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    second = [make_record(n) for n in range(4, 6)]
    add_pending(sqlite_engine, second)
    assert _inbox_ids(sqlite_engine) == [1, 2] and pending_count_of(sqlite_engine) == 2
    assert Sequencer(sqlite_engine).run_once().sequenced == 2
    assert _sequenced(sqlite_engine) == [r["id"] for r in first + second]


def test_the_databases_own_pending_rows_go_first_and_a_record_in_both_goes_once(sqlite_engine):
    own = [make_record(n) for n in range(3)]
    inboxed = [own[2], *(make_record(n) for n in range(3, 6))]  # own[2] in both places
    add_pending(sqlite_engine, own, own_table=True)
    add_pending(sqlite_engine, inboxed)
    assert pending_count_of(sqlite_engine) == 7  # counted in both: it waits in both
    result = Sequencer(sqlite_engine).run_once(force_checkpoint=True)
    assert result.sequenced == 6 and result.duplicates == 1
    assert _sequenced(sqlite_engine) == [r["id"] for r in own + inboxed[1:]]
    assert pending_count_of(sqlite_engine) == 0 and _inbox_ids(sqlite_engine) == [
        4
    ]  # the newest stays


def test_a_batch_limit_splits_across_both_places(sqlite_engine):
    own = [make_record(n) for n in range(3)]
    inboxed = [make_record(n) for n in range(3, 8)]
    add_pending(sqlite_engine, own, own_table=True)
    add_pending(sqlite_engine, inboxed)
    sequencer = Sequencer(sqlite_engine, batch_size=2)
    assert sequencer.run_once().sequenced == 8
    assert _sequenced(sqlite_engine) == [r["id"] for r in own + inboxed]


def test_a_crash_after_the_append_and_before_the_sweep_repeats_nothing(sqlite_engine, monkeypatch):
    """The mark goes with the append, in one transaction: a sweep that never happened (a
    crash, a failure) leaves rows in the inbox that no sequencer takes again."""
    add_pending(sqlite_engine, [make_record(n) for n in range(6)])

    def crash(self, identity, mark):
        raise OSError("power cut")

    monkeypatch.setattr(Sweep, "run", crash)
    with pytest.raises(Exception, match="power cut"):
        Sequencer(sqlite_engine).run_once(force_checkpoint=True)
    monkeypatch.undo()
    assert _inbox_ids(sqlite_engine) == [1, 2, 3, 4, 5, 6] and pending_count_of(sqlite_engine) == 0
    result = Sequencer(sqlite_engine).run_once(force_checkpoint=True)
    assert result.sequenced == 0 and result.duplicates == 0 and _inbox_ids(sqlite_engine) == [6]
    assert len(_sequenced(sqlite_engine)) == 6


def test_a_reader_never_creates_the_inbox(sqlite_engine):
    assert pending_count_of(sqlite_engine) == 0
    assert not os.path.exists(inbox_path(sqlite_engine))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["inbox", "own", "again", "sequence", "sweep", "replace"]),
            st.integers(1, 6),
        ),
        min_size=1,
        max_size=12,
    ),
    batch_size=st.sampled_from([1, 3, 50]),
)
def test_whatever_happens_every_record_is_in_the_log_once_and_it_verifies(
    tmp_path_factory, steps, batch_size
):
    """Records written to the inbox or the database's own table, copies written again,
    sequencers that come and go, sweeps at any time, an inbox replaced once its records are
    in: every record ends in the log exactly once, in a log that verifies."""
    directory = tmp_path_factory.mktemp("inbox")
    engine = create_audit_engine(f"sqlite:///{directory / 'audit.db'}")
    upgrade(engine)
    written: list[dict] = []
    n = 0
    for action, count in steps:
        if action in ("inbox", "own"):
            fresh = [make_record(n + i) for i in range(count)]
            n += count
            add_pending(engine, fresh, own_table=action == "own")
            written += fresh
        elif action == "again" and written:
            add_pending(engine, written[-count:])  # a spool replayed, say
        elif action == "sequence":
            Sequencer(engine, batch_size=batch_size).run_once()
        elif action == "sweep":
            Sequencer(engine, batch_size=batch_size).run_once(force_checkpoint=True)
        elif action == "replace":
            Sequencer(engine, batch_size=batch_size).run_once(force_checkpoint=True)
            path = inbox_path(engine)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
    Sequencer(engine, batch_size=batch_size).run_once(force_checkpoint=True)
    ids = _sequenced(engine)
    assert sorted(ids) == sorted(r["id"] for r in written) and len(set(ids)) == len(ids)
    assert pending_count_of(engine) == 0
    report = verify_log(engine)
    assert report.ok and report.records == len(written), report
    engine.dispose()


def test_a_database_from_before_the_inbox_upgrades_and_its_pending_records_are_kept(tmp_path):
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0001")  # the schema without audit_inbox_marks
    waiting = [make_record(n) for n in range(3)]
    add_pending(engine, waiting, own_table=True)  # where that geopin's writers put them
    upgrade(engine)
    later = [make_record(n) for n in range(3, 5)]
    add_pending(engine, later)
    assert pending_count_of(engine) == 5
    assert Sequencer(engine).run_once().sequenced == 5
    assert _sequenced(engine) == [r["id"] for r in waiting + later]
    engine.dispose()


def test_an_inbox_that_cannot_be_opened_at_start_spools_and_is_made_once_it_can(
    sqlite_engine, tmp_path
):
    import asyncio

    from geopin.audit.writer import AuditWriter

    blocker = inbox_path(sqlite_engine)
    os.mkdir(blocker)  # a directory where the inbox file should be: SQLite cannot open it
    first, second = make_record(1), make_record(2)

    async def main():
        writer = AuditWriter(sqlite_engine, spool=tmp_path / "spool", retry_interval_s=0.05)
        await writer.start()  # the inbox is unusable: records go to the spool
        await writer.record(first)
        assert writer.stats().spooled == 1
        os.rmdir(blocker)
        await asyncio.sleep(0.3)  # the spool is replayed into a new inbox
        await writer.record(second)
        await writer.close()
        return writer.stats()

    stats = asyncio.run(main())
    assert stats.spool_backlog == 0 and sorted(pending_ids(sqlite_engine)) == sorted(
        [first["id"], second["id"]]
    )


def _open_inbox_at(url: str, at: float, results: Any) -> None:
    while time.time() < at:  # both processes open the new files at the same moment
        pass
    try:
        ensure(inbox_engine(create_audit_engine(url)))
        results.put("ok")
    except Exception as exc:  # reported by the test
        results.put(repr(exc))


def test_two_processes_opening_a_new_database_at_once_both_start(tmp_path):
    """`geopin serve --workers 2` on a new database: both workers switch the new inbox file
    into WAL mode at once, which SQLite answers with "database is locked" without waiting;
    neither may fail its start for it (one in five pairs did)."""
    context = multiprocessing.get_context("fork")
    failures = []
    for n in range(25):
        url = f"sqlite:///{tmp_path / f'audit-{n}.db'}"
        results = context.Queue()
        at = time.time() + 0.2
        workers = [
            context.Process(target=_open_inbox_at, args=(url, at, results)) for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        failures += [r for r in (results.get(timeout=60), results.get(timeout=60)) if r != "ok"]
        for worker in workers:
            worker.join(60)
    assert failures == []
