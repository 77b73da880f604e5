"""geopin.audit.inline: a lone request's record committed on the event loop, waiting briefly."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from audit_factories import make_record

from audit_pending import pending_ids
from geopin.audit import writer as writer_module
from geopin.audit.db import create_audit_engine, sqlite_write_gate
from geopin.audit.inbox import inbox_engine, inbox_path
from geopin.audit.migrate import upgrade
from geopin.audit.records import encode
from geopin.audit.writer import AuditWriter


def _encoded(n: int) -> tuple[str, bytes]:
    record = make_record(n)
    return record["id"], encode(record)


def _run(engine, body, **options):
    """Run ``body(writer)`` on a started writer; returns its result and the commit threads."""
    threads: list[str] = []

    async def main():
        writer = AuditWriter(
            engine, on_commit=lambda s: threads.append(threading.current_thread().name), **options
        )
        await writer.start()
        try:
            return await body(writer)
        finally:
            await writer.close()

    return asyncio.run(main()), threads


def test_a_lone_commit_runs_on_the_loop_and_takes_the_lingering_records(sqlite_engine):
    decision, outcome = _encoded(1), _encoded(2)

    async def body(writer):
        writer.submit(*outcome)  # lingers: linger_s is long
        await writer.commit(*decision, alone=True)
        return pending_ids(sqlite_engine), writer.queue_depth

    (seen, depth), threads = _run(sqlite_engine, body, linger_s=30.0)
    assert seen == [decision[0], outcome[0]] and depth == 0
    assert threads == ["MainThread"]  # one commit, on the loop's thread: no hand-off


def test_lone_requests_one_after_another_never_wake_the_writers_thread(sqlite_engine):
    """Each request's outcome lingers until the next decision's commit takes it along; the
    linger timer armed for the first outcome must not wake the writer's thread later for an
    outcome that the next commit will take anyway (its commit would hold the write gate)."""

    async def body(writer):
        for n in range(6):  # decision, then its outcome, well within linger_s of each other
            await writer.commit(*_encoded(2 * n), alone=True)
            writer.submit(*_encoded(2 * n + 1))
            await asyncio.sleep(0.1)
        await writer.commit(*_encoded(100), alone=True)  # takes the last outcome along
        return pending_ids(sqlite_engine), writer.queue_depth

    (seen, depth), threads = _run(sqlite_engine, body, linger_s=0.5)
    assert len(seen) == 13 and depth == 0
    assert threads == ["MainThread"] * 7  # every commit on the loop, none by the thread


def test_not_alone_the_writers_thread_commits(sqlite_engine):
    async def body(writer):
        await writer.commit(*_encoded(1))
        return pending_ids(sqlite_engine)

    seen, threads = _run(sqlite_engine, body)
    assert len(seen) == 1 and threads == ["geopin-audit"]


def test_a_gate_taken_past_the_wait_sends_the_commit_to_the_writers_thread(sqlite_engine):
    gate = sqlite_write_gate(inbox_engine(sqlite_engine))  # the inbox's: where it commits
    record = _encoded(1)

    async def body(writer):
        with gate.background():  # the sequencer is writing, for longer than the loop waits
            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.create_task(writer.commit(*record, alone=True))
            await asyncio.sleep(0.2)
            assert not task.done()  # waiting for the gate, in the writer's thread
            assert loop.time() - started < 1.0  # the loop itself waited _GATE_WAIT_S at most
        await asyncio.wait_for(task, 5)
        return pending_ids(sqlite_engine)

    seen, threads = _run(sqlite_engine, body)
    assert seen == [record[0]] and threads == ["geopin-audit"]


def test_a_lone_commit_waits_on_the_loop_for_the_sequencers_short_write(sqlite_engine, monkeypatch):
    """The gate held by another thread of the process (the sequencer storing a chunk) and
    released within the wait: the commit still runs on the loop, once the gate is free."""
    monkeypatch.setattr(writer_module, "_GATE_WAIT_S", 30.0)  # only the release lets it in
    gate = sqlite_write_gate(inbox_engine(sqlite_engine))  # the inbox's: where it commits
    record = _encoded(1)
    holding, released = threading.Event(), []

    def sequencer() -> None:
        with gate.background():
            holding.set()
            time.sleep(0.2)
            released.append(time.monotonic())

    async def body(writer):
        thread = threading.Thread(target=sequencer)
        thread.start()
        holding.wait(10)
        await writer.commit(*record, alone=True)
        committed = time.monotonic()
        thread.join(10)
        return pending_ids(sqlite_engine), committed

    (seen, committed), threads = _run(sqlite_engine, body)
    assert seen == [record[0]] and threads == ["MainThread"]
    assert released and committed >= released[0]


def test_another_process_holding_the_write_lock_never_blocks_the_loop(sqlite_engine, tmp_path):
    other = sqlite3.connect(inbox_path(sqlite_engine), isolation_level=None)
    record = _encoded(1)

    async def body(writer):
        other.execute("BEGIN IMMEDIATE")  # SQLite's lock, held by someone else
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        task = asyncio.create_task(writer.commit(*record, alone=True))
        await asyncio.sleep(0.3)
        assert not task.done() and ticks >= 10  # the loop kept turning meanwhile
        other.execute("COMMIT")
        await asyncio.wait_for(task, 5)
        ticking.cancel()
        return pending_ids(sqlite_engine)

    try:
        seen, threads = _run(sqlite_engine, body)
    finally:
        other.close()
    assert seen == [record[0]] and threads == ["geopin-audit"]


def test_the_logs_own_write_lock_never_holds_a_commit_up(sqlite_engine, tmp_path):
    """The sequencer appending to the log (the database's write gate and SQLite's lock on its
    file, both held here for as long as the test likes): a lone commit goes to the inbox, on
    the loop, without waiting for either."""
    log_gate = sqlite_write_gate(sqlite_engine)
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    record = _encoded(1)

    async def body(writer):
        with log_gate.background():
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            await asyncio.wait_for(writer.commit(*record, alone=True), 5)
            waited = time.monotonic() - started
            other.execute("COMMIT")
        return pending_ids(sqlite_engine), waited

    try:
        (seen, waited), threads = _run(sqlite_engine, body)
    finally:
        other.close()
    assert seen == [record[0]] and threads == ["MainThread"]
    assert waited < writer_module._GATE_WAIT_S + 0.5  # it did not wait for the log's lock


def test_full_synchronous_never_commits_on_the_loop(tmp_path):
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'full.db'}", sqlite_synchronous="FULL")
    upgrade(engine)

    async def body(writer):
        for n in range(3):
            await writer.commit(*_encoded(n), alone=True)  # an fsync each: not on the loop
        return pending_ids(engine)

    seen, threads = _run(engine, body)
    assert len(seen) == 3 and set(threads) == {"geopin-audit"}
    engine.dispose()


def test_a_failing_loop_commit_falls_back_and_pauses(sqlite_engine, caplog):
    """A database error on the loop's connection (here: its table gone for that connection's
    statements) is not retried on the loop for a while; the writer's thread takes the record."""
    record = _encoded(1)

    async def body(writer):
        committer = writer._on_loop
        committer.insert = "INSERT INTO no_such_table (record_id, body) VALUES (?, ?)"
        started = time.monotonic()
        await writer.commit(*record, alone=True)
        assert committer._paused_until >= started + writer.retry_interval_s - 0.01
        await writer.commit(*_encoded(2), alone=True)  # paused: straight to the thread
        return pending_ids(sqlite_engine)

    with caplog.at_level("WARNING", logger="geopin.audit.inline"):
        seen, threads = _run(sqlite_engine, body, retry_interval_s=60.0)
    assert len(seen) == 2 and threads == ["geopin-audit", "geopin-audit"]
    assert "no_such_table" in caplog.text
