from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
from audit_factories import make_record

from audit_pending import pending_ids, pending_rows
from geopin.audit.db import create_audit_engine
from geopin.audit.inbox import inbox_path
from geopin.audit.migrate import upgrade
from geopin.audit.records import encode
from geopin.audit.schema import records as records_table
from geopin.audit.sequencer import Sequencer
from geopin.audit.spool import Spool
from geopin.audit.store import pending_count
from geopin.audit.writer import AuditWriter
from geopin.errors import AuditError, AuditUnavailable, SchemaOutOfDate


def test_concurrent_records_are_group_committed(engine):
    records = [make_record(n) for n in range(500)]

    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        await asyncio.gather(*(writer.record(r) for r in records))
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert sorted(pending_ids(engine)) == sorted(r["id"] for r in records)
    assert stats.records == 500
    assert 1 <= stats.transactions < 500  # grouped: far fewer commits than records
    assert stats.queue_depth == 0 and stats.commit_p50_s is not None


def test_record_returns_only_after_commit(engine):
    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        record = make_record(1)
        await writer.record(record)
        # A separate connection sees it the moment record() returns.
        seen = pending_ids(engine)
        await writer.close()
        return record["id"], seen

    rid, seen = asyncio.run(main())
    assert seen == [rid]


def test_close_flushes_everything_queued(engine):
    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        tasks = [asyncio.create_task(writer.record(make_record(n))) for n in range(50)]
        await asyncio.sleep(0)
        await writer.close()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert len(pending_ids(engine)) == 50


def test_a_lingering_record_rides_with_the_next_commit(engine):
    async def main():
        writer = AuditWriter(engine, linger_s=30.0)  # the timer never fires in this test
        await writer.start()
        outcome = make_record(1)
        lingering = asyncio.create_task(writer.record(outcome, linger=True))
        await asyncio.sleep(0.1)
        assert not lingering.done() and pending_ids(engine) == []  # no commit of its own
        assert writer.queue_depth == 1
        await writer.record(make_record(2))  # the next decision's commit takes it along
        await asyncio.wait_for(lingering, 1.0)
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert stats.transactions == 1 and stats.records == 2
    assert len(pending_ids(engine)) == 2


def test_a_lingering_record_is_committed_within_linger_s_on_its_own(engine):
    async def main():
        writer = AuditWriter(engine, linger_s=0.05)
        await writer.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(writer.record(make_record(n), linger=True) for n in range(20)))
        waited = loop.time() - started
        stats = writer.stats()
        await writer.close()
        return waited, stats

    waited, stats = asyncio.run(main())
    assert 0.04 <= waited < 2.0
    assert stats.transactions == 1 and stats.records == 20


def test_close_commits_what_is_lingering(engine):
    async def main():
        writer = AuditWriter(engine, linger_s=30.0)
        await writer.start()
        tasks = [asyncio.create_task(writer.record(make_record(n), linger=True)) for n in range(10)]
        await asyncio.sleep(0)
        await writer.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 1.0)

    asyncio.run(main())
    assert len(pending_ids(engine)) == 10


def test_commit_and_submit_take_encoded_records(engine):
    decision, outcome = make_record(1), make_record(2)

    async def main():
        writer = AuditWriter(engine, linger_s=30.0, journal=False)  # each commit() commits
        await writer.start()
        writer.submit(outcome["id"], encode(outcome))  # nobody waits: it joins the next commit
        assert writer.queue_depth == 1 and pending_ids(engine) == []
        await writer.commit(decision["id"], encode(decision))
        seen = pending_ids(engine)
        stats = writer.stats()
        await writer.close()
        return seen, stats

    seen, stats = asyncio.run(main())
    assert sorted(seen) == sorted([decision["id"], outcome["id"]])
    assert stats.transactions == 1 and stats.queue_depth == 0


def test_a_submitted_record_that_cannot_be_kept_is_logged(caplog):
    record = make_record(3)

    async def main():
        writer = AuditWriter(_unreachable_pg(), check=False, linger_s=0.01)
        await writer.start()
        writer.submit(record["id"], encode(record))
        await writer.close()

    with caplog.at_level("ERROR", logger="geopin.audit.writer"):
        asyncio.run(main())
    assert f"audit record {record['id']} not recorded" in caplog.text


def test_more_lingering_than_a_batch_takes_several_commits(engine):
    async def main():
        writer = AuditWriter(engine, linger_s=0.01, max_batch=8)
        await writer.start()
        await asyncio.gather(*(writer.record(make_record(n), linger=True) for n in range(30)))
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert stats.records == 30 and stats.transactions >= 4
    assert len(pending_ids(engine)) == 30


def test_malformed_record_fails_its_caller_only(engine):
    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        with pytest.raises(AuditError, match="float"):
            await writer.record({**make_record(1), "latency": 0.5})
        await writer.record(make_record(2))
        await writer.close()

    asyncio.run(main())
    assert len(pending_ids(engine)) == 1


def test_record_before_start_is_an_error(engine):
    async def main():
        with pytest.raises(AuditError, match="not running"):
            await AuditWriter(engine).record(make_record())

    asyncio.run(main())


def test_start_refuses_an_unmigrated_database(tmp_path):
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'fresh.db'}")

    async def main():
        with pytest.raises(SchemaOutOfDate, match="geopin db upgrade"):
            await AuditWriter(engine).start()

    asyncio.run(main())


def _unreachable_pg():
    # A closed port: connection refused, the "database is down" case.
    return create_audit_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere")


def test_database_down_without_spool_fails_closed():
    async def main():
        writer = AuditWriter(_unreachable_pg(), check=False)
        await writer.start()
        with pytest.raises(AuditUnavailable):
            await writer.record(make_record())
        await writer.close()

    asyncio.run(main())


def test_spool_keeps_records_while_down_and_replays_exactly_once(engine, tmp_path):
    """Database down -> records spooled -> database back -> replayed once, nothing lost."""
    spool_path = tmp_path / "audit.spool"
    down_records = [make_record(n) for n in range(20)]

    async def while_down():
        writer = AuditWriter(_unreachable_pg(), spool=spool_path, check=False)
        await writer.start()
        await asyncio.gather(*(writer.record(r) for r in down_records))
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(while_down())
    assert stats.spooled == 20 and stats.records == 0
    assert Spool(spool_path).count() == 20

    later = make_record(99)

    async def when_back():
        writer = AuditWriter(engine, spool=spool_path, retry_interval_s=0.05)
        await writer.start()  # replays the spool first
        await writer.record(later)
        await writer.close()

    asyncio.run(when_back())
    ids = pending_ids(engine)
    assert ids == [r["id"] for r in down_records] + [later["id"]]  # spool order kept
    assert not Spool(spool_path).has_records()


def test_replaying_a_spool_twice_does_not_duplicate(engine, tmp_path):
    spool = Spool(tmp_path / "s")
    records = [make_record(n) for n in range(5)]
    from geopin.audit.records import encode

    bodies = [encode(r) for r in records]
    spool.append(bodies)
    copy = (tmp_path / "s").read_bytes()

    async def replay():
        writer = AuditWriter(engine, spool=spool)
        await writer.start()
        await writer.close()

    asyncio.run(replay())
    (tmp_path / "s").write_bytes(copy)  # as if the process died before emptying the spool
    asyncio.run(replay())
    ids = sorted(r["id"] for r in records)
    if engine.dialect.name == "postgresql":  # its pending table skips a record id it holds
        assert sorted(pending_ids(engine)) == ids
    else:  # the inbox keeps no index on the id: the copies wait there...
        assert sorted(pending_ids(engine)) == sorted(ids * 2)
    result = Sequencer(engine).run_once(force_checkpoint=True)
    assert result.sequenced == 5  # ...and never reach the log
    with engine.connect() as conn:
        assert sorted(conn.scalars(sa.select(records_table.c.record_id))) == ids
        assert pending_count(conn) == 0


def test_spool_reports_torn_and_unreadable_lines(tmp_path, caplog):
    from geopin.audit.records import encode

    spool = Spool(tmp_path / "s")
    good = encode(make_record(1))
    (tmp_path / "s").write_bytes(good + b"\nnot json\n" + good[:20])
    got: list = []
    assert spool.replay(got.extend) == 1
    assert [body for _, body in got] == [good]
    assert (tmp_path / "s.rejected").read_bytes() == b"not json\n" + good[:20] + b"\n"
    assert "unterminated" in caplog.text and "unreadable" in caplog.text
    assert not spool.has_records()


_KILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from audit_factories import make_record
    from geopin.audit.db import create_audit_engine
    from geopin.audit.records import encode
    from geopin.audit.writer import AuditWriter

    async def main():
        writer = AuditWriter(create_audit_engine(sys.argv[1]))
        await writer.start()
        n = 0
        while True:
            record = make_record(n)
            if sys.argv[3] == "commit":  # as the router keeps a decision: journaled, here
                await writer.commit(record["id"], encode(record))
                if n % 50 == 0:
                    await asyncio.sleep(0.001)  # room for the writer's thread
            else:
                await writer.record(record)
            print(record["id"], flush=True)  # acknowledged
            n += 1

    asyncio.run(main())
    """
)


def killed_after(url: str, how: str, count: int) -> list[str]:
    """Run a writer in a child process that keeps records (``how``: ``record`` or ``commit``)
    one after another; SIGKILL it after ``count``; the ids it had acknowledged by then."""
    here = os.path.dirname(__file__)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, url, here, how], stdout=subprocess.PIPE, text=True
    )
    acknowledged = []
    assert child.stdout is not None
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == count:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    acknowledged.extend(line.strip() for line in child.stdout)  # printed before the kill
    child.stdout.close()
    return acknowledged


@pytest.mark.slow
def test_acknowledged_records_survive_sigkill(tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    engine = create_audit_engine(url)
    upgrade(engine)
    acknowledged = killed_after(url, "record", 300)
    stored = set(pending_ids(engine))
    assert set(acknowledged) <= stored
    engine.dispose()


def test_stats_snapshot_is_json_friendly(engine):
    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        await writer.record(make_record())
        await writer.close()
        return writer.stats()

    stats = asyncio.run(main())
    json.dumps(stats.__dict__)
    assert stats.transactions == 1 and stats.records == 1


def test_on_commit_hears_every_transaction_and_cannot_break_the_writer(engine):
    durations: list[float] = []

    def on_commit(seconds: float) -> None:
        durations.append(seconds)
        raise RuntimeError("a broken metrics backend")

    async def main():
        writer = AuditWriter(engine, on_commit=on_commit)
        await writer.start()
        await writer.record(make_record(1))
        await asyncio.gather(*(writer.record(make_record(n)) for n in range(2, 40)))
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert len(durations) == stats.transactions >= 2
    assert all(0 < d < 30 for d in durations)
    assert len(pending_ids(engine)) == 39


def test_queue_depth_and_stats_can_be_read_from_another_thread(engine):
    import threading

    seen: list[int] = []
    problems: list[BaseException] = []
    stop = threading.Event()

    def reader(writer: AuditWriter) -> None:
        while not stop.is_set():
            try:
                seen.append(writer.queue_depth)
                writer.stats()
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                problems.append(exc)
                return

    async def main():
        writer = AuditWriter(engine)
        await writer.start()
        thread = threading.Thread(target=reader, args=(writer,))
        thread.start()
        try:
            for round_ in range(5):
                await asyncio.gather(
                    *(writer.record(make_record(round_ * 1000 + n)) for n in range(200))
                )
        finally:
            stop.set()
            thread.join()
        depth = writer.queue_depth
        await writer.close()
        return depth

    assert asyncio.run(main()) == 0
    assert not problems
    assert max(seen) > 0  # the reader saw records waiting for their commit


def _wal_bytes(engine) -> int:
    """The size of the WAL of the file the writer commits to (on SQLite, the inbox)."""
    path = f"{inbox_path(engine)}-wal"
    return os.path.getsize(path) if os.path.exists(path) else 0


@pytest.mark.parametrize("interval", [0, 0.05])
def test_commits_never_checkpoint_the_wal_the_checkpointer_does(tmp_path, interval):
    """No commit pays for a WAL checkpoint (it would be an fsync in a request's path); the
    checkpointer thread keeps the WAL from growing past what arrives between its rounds."""
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    upgrade(engine)

    async def main():
        writer = AuditWriter(engine, wal_checkpoint_interval_s=interval)
        await writer.start()
        sizes = []
        for burst in range(4):
            for n in range(300):  # one commit each: many WAL frames
                await writer.record(make_record(burst * 1000 + n))
            sizes.append(_wal_bytes(engine))
            await asyncio.sleep(0.3)
        await writer.close()
        return sizes

    sizes = asyncio.run(main())
    page = 4096
    if interval == 0:  # nothing checkpoints: the WAL grows past SQLite's automatic threshold
        assert sizes[-1] > 1000 * page and sizes == sorted(sizes)
    else:  # checkpointed between bursts, so the WAL is reused from its start
        assert sizes[-1] < 2 * sizes[0]
    engine.dispose()


def test_the_wal_stops_growing_under_commits_that_never_pause(tmp_path):
    """A steady stream of commits leaves a PASSIVE checkpoint never done (more is written while
    it copies), and SQLite starts the WAL over only once it is: without the writer finishing
    each round under the gate, the WAL grew for as long as the stream lasted."""
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    upgrade(engine)

    async def main():
        writer = AuditWriter(engine, wal_checkpoint_interval_s=0.05)
        await writer.start()
        loop = asyncio.get_running_loop()
        sizes, n = [], 0
        for _ in range(6):
            deadline = loop.time() + 0.4
            while loop.time() < deadline:  # no pause between commits
                await asyncio.gather(*(writer.record(make_record(n + i)) for i in range(4)))
                n += 4
            sizes.append(_wal_bytes(engine))
        await writer.close()
        return sizes, n

    sizes, written = asyncio.run(main())
    assert written > 1000
    # Reused from its start every round: the high-water mark of one round, not of the run.
    assert max(sizes[3:]) <= 1.5 * max(sizes[:3]), sizes
    engine.dispose()


_OTHER_ROUTER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db, seconds, pin = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "pin"
    def connect():
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # as the router's writer: never checkpoints
        return conn
    conn = connect()
    readers = [connect(), connect()] if pin else []
    body, n = b"x" * 900, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pin:
            # A read transaction that begins before this commit, then the one before it ends:
            # one is always open, and none sees the last commit, so no checkpoint can copy the
            # whole WAL and it never starts over.
            fresh, stale = readers[n % 2], readers[(n + 1) % 2]
            fresh.execute("BEGIN")
            fresh.execute("SELECT count(*) FROM audit_pending").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO audit_pending (record_id, body) VALUES (?, ?)", (f"o{n}", body))
        conn.execute("COMMIT")
        if pin and stale.in_transaction:
            stale.execute("COMMIT")
        n += 1
        time.sleep(0.0005)
    print(n)
    """
)


@pytest.mark.parametrize("force", [True, False], ids=["forced", "passive-only"])
def test_another_process_writing_all_the_time_cannot_make_the_wal_grow_without_end(
    tmp_path, monkeypatch, force
):
    """Another router on the same file commits between every two rounds of this one's
    checkpointer, so a PASSIVE checkpoint seldom finds the WAL all copied and it seldom starts
    over: with ``--workers 2`` the WAL grew by 80 MB every 10 s. Past ``_WAL_LIMIT_FRAMES`` a
    TRUNCATE checkpoint, which waits for the other process's transactions, empties it.

    The control (no limit) makes the other process's worst case certain instead of likely: it
    always holds a read transaction older than its last commit, which pins the WAL, so the
    PASSIVE rounds alone can only let it grow."""
    from geopin.audit import writer as writer_module

    forced_at = 600  # pages: about 2.4 MB
    monkeypatch.setattr(writer_module, "_WAL_LIMIT_FRAMES", forced_at if force else 10**9)
    database = tmp_path / "wal.db"
    engine = create_audit_engine(f"sqlite:///{database}")
    upgrade(engine)

    async def main():
        writer = AuditWriter(engine, wal_checkpoint_interval_s=0.05)
        await writer.start()
        mode = "gaps" if force else "pin"
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_ROUTER, inbox_path(engine), "4", mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        sizes = []
        while other.poll() is None:
            await asyncio.sleep(0.2)
            sizes.append(_wal_bytes(engine))
        written = int(other.communicate()[0])
        await writer.close()
        return sizes, written

    sizes, written = asyncio.run(main())
    assert written > 2000
    page = 4096
    if force:  # emptied again and again (how soon after the threshold depends on the CPU)
        emptied = sum(later < earlier for earlier, later in itertools.pairwise(sizes))
        assert emptied >= 2, sizes
        assert min(sizes[len(sizes) // 2 :]) < forced_at * page, sizes
    else:  # the PASSIVE rounds alone: it only grows, by at least a page a commit
        assert sizes == sorted(sizes) and sizes[-1] > written * page, (sizes, written)
    assert len(pending_rows(engine)) == written
    engine.dispose()


class _Interrupted(BaseException):
    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_commit_that_never_returns_is_never_acknowledged(engine):
    async def main():
        writer = AuditWriter(engine)
        await writer.start()

        def interrupted(rows):
            raise _Interrupted

        writer._commit = interrupted  # type: ignore[method-assign]
        with pytest.raises(AuditError, match="interrupted"):
            await writer.record(make_record(1))
        writer._thread.join(5)  # the interruption ends the thread...
        with pytest.raises(AuditError, match="stopped"):  # ...and later calls hear of it
            await writer.record(make_record(2))
        await writer.close()

    asyncio.run(main())
    assert pending_ids(engine) == []
