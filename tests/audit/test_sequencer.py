from __future__ import annotations

import asyncio
import multiprocessing
import sys

import pytest
import sqlalchemy as sa
from audit_factories import add_pending, append_and_sequence, make_outcome, make_record

from geopin.audit import merkle
from geopin.audit.canonical import canonical_json
from geopin.audit.checkpoint import SigningKey
from geopin.audit.checkpoint_file import CheckpointFile
from geopin.audit.db import create_audit_engine
from geopin.audit.schema import checkpoints, nodes, record_rules, records
from geopin.audit.sequencer import Sequencer
from geopin.audit.store import pending_count
from geopin.errors import VerificationError


@pytest.fixture
def key():
    return SigningKey.generate("audit.test/geopin")


def _sequenced(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(records.c.seq, records.c.record_id).order_by(records.c.seq)
        ).all()


def test_pending_records_get_contiguous_seqs_in_pending_order(engine):
    batch = [make_record(n) for n in range(7)] + [make_outcome(n) for n in range(3)]
    result = append_and_sequence(engine, batch)
    assert result.sequenced == 10 and result.tree_size == 10 and result.checkpoint is None
    assert _sequenced(engine) == [(i, r["id"]) for i, r in enumerate(batch)]
    with engine.connect() as conn:
        assert pending_count(conn) == 0
        rules = conn.execute(sa.select(record_rules.c.seq, record_rules.c.rule_id)).all()
        leaves = conn.scalars(
            sa.select(nodes.c.hash).where(nodes.c.level == 0).order_by(nodes.c.idx)
        ).all()
    assert sorted(rules) == [(i, "eu-residency") for i in range(7)]
    assert leaves == [merkle.leaf_hash(canonical_json(r)) for r in batch]


def test_batches_append_to_the_same_tree(engine):
    first = [make_record(n) for n in range(5)]
    second = [make_record(n) for n in range(5, 12)]
    append_and_sequence(engine, first)
    sequencer = Sequencer(engine, batch_size=3)  # several transactions
    add_pending(engine, second)
    assert sequencer.run_once().sequenced == 7
    everything = first + second
    with engine.connect() as conn:
        stored = {
            (lv, ix): h
            for lv, ix, h in conn.execute(sa.select(nodes.c.level, nodes.c.idx, nodes.c.hash))
        }
    expected_root = merkle.root([merkle.leaf_hash(canonical_json(r)) for r in everything])
    assert merkle.subtree_hash(0, 12, lambda lv, ix: stored[(lv, ix)]) == expected_root


def test_checkpoints_are_signed_stored_and_appended_to_the_file(engine, key, tmp_path):
    cp_file = tmp_path / "checkpoints"
    batch = [make_record(n) for n in range(4)]
    result = append_and_sequence(engine, batch, key=key, checkpoint_file=cp_file)
    assert result.checkpoint is not None and result.checkpoint.size == 4
    root = merkle.root([merkle.leaf_hash(canonical_json(r)) for r in batch])
    assert result.checkpoint.root == root
    notes = CheckpointFile(cp_file).read()
    assert len(notes) == 1 and key.verifier().open(notes[0]).root == root
    with engine.connect() as conn:
        row = conn.execute(sa.select(checkpoints)).one()
    assert row.size == 4 and bytes(row.root) == root and row.note == notes[0]


def test_checkpoint_every_n_records_or_t_seconds(engine, key):
    sequencer = Sequencer(engine, signing_key=key, checkpoint_every=5, checkpoint_interval_s=3600)
    add_pending(engine, [make_record(n) for n in range(3)])
    assert sequencer.run_once().checkpoint.size == 3  # the first one is signed at once
    add_pending(engine, [make_record(n) for n in range(3, 6)])
    assert sequencer.run_once().checkpoint is None  # 3 more: neither 5 records nor an hour
    add_pending(engine, [make_record(n) for n in range(6, 9)])
    assert sequencer.run_once().checkpoint.size == 9
    add_pending(engine, [make_record(9)])
    late = Sequencer(engine, signing_key=key, checkpoint_every=5, checkpoint_interval_s=0)
    assert late.run_once().checkpoint.size == 10  # the interval has passed


def test_refuses_to_sign_a_tree_that_does_not_extend_the_last_checkpoint(engine, key):
    append_and_sequence(engine, [make_record(n) for n in range(4)], key=key)
    with engine.begin() as conn:  # rewrite history: a different leaf 1
        conn.execute(
            nodes.update().where(nodes.c.level == 0, nodes.c.idx == 3).values(hash=b"\x07" * 32)
        )
        conn.execute(nodes.delete().where(nodes.c.level > 0))
        conn.execute(nodes.insert().values(level=1, idx=0, hash=b"\x01" * 32))
        conn.execute(nodes.insert().values(level=1, idx=1, hash=b"\x02" * 32))
        conn.execute(nodes.insert().values(level=2, idx=0, hash=b"\x03" * 32))
    add_pending(engine, [make_record(9)])
    with pytest.raises(
        VerificationError, match="not consistent with the signed checkpoint of size 4"
    ):
        Sequencer(engine, signing_key=key).run_once(force_checkpoint=True)
    with engine.connect() as conn:  # nothing was sequenced or signed
        assert conn.scalar(sa.select(sa.func.count()).select_from(checkpoints)) == 1
        assert pending_count(conn) == 1


def test_already_sequenced_records_replayed_into_pending_are_dropped(engine):
    batch = [make_record(n) for n in range(4)]
    append_and_sequence(engine, batch[:3])
    result = append_and_sequence(engine, batch[1:])
    assert result.sequenced == 1 and result.duplicates == 2
    assert [rid for _, rid in _sequenced(engine)] == [r["id"] for r in batch]


def test_background_run_sequences_until_stopped(engine, key):
    add_pending(engine, [make_record(n) for n in range(5)])

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(
            Sequencer(engine, signing_key=key, checkpoint_interval_s=0).run(
                stop, poll_interval_s=0.01
            )
        )
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(_sequenced(engine)) == 5:
                break
        stop.set()
        await task

    asyncio.run(main())
    assert len(_sequenced(engine)) == 5


def _writer_process(url: str, worker: int, count: int, path: str) -> None:
    sys.path.insert(0, path)
    from audit_factories import make_record as make

    from geopin.audit.writer import AuditWriter

    async def main():
        writer = AuditWriter(create_audit_engine(url))
        await writer.start()
        await asyncio.gather(*(writer.record(make(worker * 10_000 + n)) for n in range(count)))
        await writer.close()

    asyncio.run(main())


def _sequencer_process(url: str, rounds: int) -> None:
    import time

    sequencer = Sequencer(create_audit_engine(url))
    for _ in range(rounds):
        sequencer.run_once()
        time.sleep(0.01)


@pytest.mark.slow
def test_several_writer_and_sequencer_processes(engine, database_url):
    """No gaps, no duplicate seqs, every record exactly once."""
    import os

    context = multiprocessing.get_context("spawn")
    here = os.path.dirname(__file__)
    writers = [
        context.Process(target=_writer_process, args=(database_url, w, 150, here)) for w in range(4)
    ]
    sequencers = [
        context.Process(target=_sequencer_process, args=(database_url, 40)) for _ in range(2)
    ]
    for p in writers + sequencers:
        p.start()
    for p in writers + sequencers:
        p.join(120)
        assert p.exitcode == 0
    Sequencer(engine).run_once()
    rows = _sequenced(engine)
    assert [seq for seq, _ in rows] == list(range(600))
    expected = {make_record(w * 10_000 + n)["decision_id"] for w in range(4) for n in range(150)}
    with engine.connect() as conn:
        got = conn.scalars(sa.select(records.c.decision_id)).all()
        leaves = conn.scalar(
            sa.select(sa.func.count()).select_from(nodes).where(nodes.c.level == 0)
        )
    assert sorted(got) == sorted(expected) and leaves == 600


def test_on_checkpoint_reports_signed_and_refused_checkpoints(engine, key):
    heard: list[bool] = []
    sequencer = Sequencer(engine, signing_key=key, on_checkpoint=heard.append)
    add_pending(engine, [make_record(n) for n in range(3)])
    assert sequencer.run_once(force_checkpoint=True).checkpoint is not None
    assert sequencer.run_once(force_checkpoint=True).checkpoint is None  # nothing new
    assert heard == [True]
    with engine.begin() as conn:  # rewrite history under the signed checkpoint
        conn.execute(nodes.update().where(nodes.c.level == 0).values(hash=b"\x07" * 32))
    add_pending(engine, [make_record(9)])
    with pytest.raises(VerificationError):
        sequencer.run_once(force_checkpoint=True)
    assert heard == [True, False]


def test_a_failing_on_checkpoint_hook_does_not_stop_sequencing(engine, key):
    def broken(ok: bool) -> None:
        raise RuntimeError("a broken metrics backend")

    add_pending(engine, [make_record(n) for n in range(3)])
    result = Sequencer(engine, signing_key=key, on_checkpoint=broken).run_once(
        force_checkpoint=True
    )
    assert result.sequenced == 3 and result.checkpoint is not None


def test_sequencing_lag_is_the_age_of_the_oldest_waiting_record(engine, tmp_path):
    from geopin.audit.records import new_record_id

    sequencer = Sequencer(engine)
    assert sequencer.sequencing_lag_s() == 0.0
    add_pending(engine, [make_record(1, record_id=new_record_id())])
    sequencer.run_once()
    assert 0.0 <= sequencer.sequencing_lag_s() < 5.0  # the one record waited briefly
    # Locked out: the lag is the age of what is still pending, and grows until it is taken.
    holder = Sequencer(engine)
    old_id = new_record_id()
    add_pending(engine, [make_record(2, record_id=old_id)])
    _hold_lock(engine, holder)
    try:
        assert sequencer.run_once().locked_out
        first = sequencer.sequencing_lag_s()
        assert first >= 0.0
        import time

        time.sleep(0.05)
        assert sequencer.sequencing_lag_s() >= first + 0.04
    finally:
        _release_lock(engine, holder)
    assert sequencer.run_once().sequenced == 1
    assert sequencer.sequencing_lag_s() < 5.0


def _hold_lock(engine, holder: Sequencer) -> None:
    if engine.dialect.name == "sqlite":
        assert holder._file_lock is not None and holder._file_lock.acquire(wait=False)
    else:
        conn = engine.connect()
        conn.begin()
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.geopin-seq'))")
        )
        holder._held = conn  # type: ignore[attr-defined]


def _release_lock(engine, holder: Sequencer) -> None:
    if engine.dialect.name == "sqlite":
        holder._file_lock.release()
    else:
        holder._held.rollback()  # type: ignore[attr-defined]
        holder._held.close()  # type: ignore[attr-defined]


def test_a_sequencer_locked_out_on_sqlite_returns_at_once(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("the lock file is SQLite's")
    import time

    holder = Sequencer(engine)
    add_pending(engine, [make_record(1)])
    _hold_lock(engine, holder)
    try:
        # Hold SQLite's write lock too: a sequencer that asked SQLite would wait 30 s.
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                started = time.perf_counter()
                result = Sequencer(engine).run_once()
                elapsed = time.perf_counter() - started
    finally:
        _release_lock(engine, holder)
    assert result.locked_out and elapsed < 1.0
    assert Sequencer(engine).run_once().sequenced == 1


def test_a_torn_checkpoint_file_tail_is_removed_by_the_next_checkpoint(engine, key, tmp_path):
    cp_file = tmp_path / "checkpoints"
    sequencer = Sequencer(engine, signing_key=key, checkpoint_file=cp_file)
    add_pending(engine, [make_record(n) for n in range(2)])
    sequencer.run_once(force_checkpoint=True)
    with cp_file.open("a", encoding="utf-8") as f:
        f.write("audit.test/geopin\n3\n")  # a crash during an append
    add_pending(engine, [make_record(n) for n in range(2, 4)])
    result = sequencer.run_once(force_checkpoint=True)
    notes = CheckpointFile(cp_file).read()
    assert [key.verifier().open(n).size for n in notes] == [2, result.tree_size] == [2, 4]


def test_a_checkpoint_file_that_cannot_be_written_does_not_stop_the_sequencer(
    engine, key, tmp_path
):
    from geopin.errors import AuditError

    heard: list[bool] = []
    sequencer = Sequencer(
        engine, signing_key=key, checkpoint_file=tmp_path, on_checkpoint=heard.append
    )
    add_pending(engine, [make_record(1)])
    with pytest.raises(AuditError, match="checkpoint signed but not appended") as caught:
        sequencer.run_once(force_checkpoint=True)
    assert not isinstance(caught.value, VerificationError)  # not taken for a refusal to sign
    assert heard == [False]
    with engine.connect() as conn:  # signed and stored in the database all the same
        assert conn.scalar(sa.select(sa.func.count()).select_from(checkpoints)) == 1


def test_a_batch_stored_in_many_small_transactions_is_one_consistent_log(engine, key):
    """SQLite stores a batch a few records per transaction; the nodes each one completes go
    with it, so the tree equals a plain Merkle tree over the same leaves."""
    from geopin.audit.canonical import canonical_json
    from geopin.audit.verify import verify_log

    batch = [make_record(n) for n in range(203)]
    add_pending(engine, batch[:100])
    first = Sequencer(engine, signing_key=key, batch_size=150).run_once(force_checkpoint=True)
    assert first.sequenced == 100 and first.duplicates == 0 and first.tree_size == 100
    add_pending(engine, [batch[7]])  # a replayed duplicate of a sequenced record
    add_pending(engine, batch[100:])
    second = Sequencer(engine, signing_key=key, batch_size=60).run_once(force_checkpoint=True)
    assert second.sequenced == 103 and second.duplicates == 1
    assert second.checkpoint is not None and second.checkpoint.size == 203
    leaves = [merkle.leaf_hash(canonical_json(r)) for r in batch]
    assert second.checkpoint.root == merkle.root(leaves)
    assert [rid for _, rid in _sequenced(engine)] == [r["id"] for r in batch]
    with engine.connect() as conn:
        assert pending_count(conn) == 0
    assert verify_log(engine, verifier=key.verifier()).ok


def test_only_duplicates_pending_are_dropped(engine):
    batch = [make_record(n) for n in range(3)]
    append_and_sequence(engine, batch)
    add_pending(engine, batch[:2])
    result = Sequencer(engine).run_once()
    assert result.sequenced == 0 and result.duplicates == 2
    with engine.connect() as conn:
        assert pending_count(conn) == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="Linux scheduling")
def test_background_sequencing_runs_at_the_lowest_priority(engine, key):
    import os

    policies: list[int] = []
    sequencer = Sequencer(
        engine,
        signing_key=key,
        checkpoint_interval_s=0,
        on_checkpoint=lambda ok: policies.append(os.sched_getscheduler(0)),
    )
    add_pending(engine, [make_record(n) for n in range(5)])

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(sequencer.run(stop, poll_interval_s=0.01))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if policies:
                break
        stop.set()
        await task

    asyncio.run(main())
    assert policies and set(policies) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
