"""Cutting a prepared sequencer batch into SQLite write transactions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit import merkle
from geopin.audit.batch import Batch, _chunks
from geopin.errors import AuditError


def _batch(
    size: int,
    count: int,
    duplicates: int,
    inbox: int = 0,
    inbox_duplicates: frozenset = frozenset(),
) -> Batch:
    """A batch of ``count`` leaves extending a tree of ``size``, two rules per record; its last
    ``inbox`` records come from the inbox, whose rows (ids from 1) include duplicates at the
    positions in ``inbox_duplicates`` (between and after its fresh ones)."""
    frontier = merkle.Frontier.empty()
    if size:
        frontier = frontier.extended([merkle.leaf_hash(b"%d" % i) for i in range(size)])
    leaves = [merkle.leaf_hash(b"%d" % (size + i)) for i in range(count)]
    _, completed = merkle.append(frontier, leaves)
    seqs = range(size, size + count)
    fresh_inbox = iter(range(size + count - inbox, size + count))
    inbox_rows = []
    for position in range(inbox + len(inbox_duplicates)):
        leaf = -1 if position in inbox_duplicates else next(fresh_inbox, None)
        if leaf is not None:
            inbox_rows.append((len(inbox_rows) + 1, leaf))
    return Batch(
        size=size,
        new_size=size + count,
        pending_ids=[None if s >= size + count - inbox else 1000 + s for s in seqs],
        inbox="inbox-a" if inbox_rows else None,
        inbox_rows=inbox_rows,
        duplicate_ids=[5000 + i for i in range(duplicates)],
        record_rows=[(s, f"id-{s}") for s in seqs],
        rule_rows=[(s, r) for s in seqs for r in ("a", "b")],
        nodes=list(completed),
    )


@settings(max_examples=150)
@given(
    size=st.integers(0, 300),
    count=st.integers(0, 200),
    duplicates=st.integers(0, 3),
    step=st.sampled_from([1, 3, 16, 64]),
)
def test_every_row_lands_once_in_the_chunk_of_the_leaf_that_completes_it(
    size, count, duplicates, step
):
    batch = _batch(size, count, duplicates)
    chunks = _chunks(batch, step)
    assert [lo for lo, _ in chunks] == (list(range(size, size + count, step)) or [size])
    seen = {"records": [], "rules": [], "nodes": [], "gone": []}
    for lo, (records, rules, nodes, gone, mark) in chunks:
        assert mark is None
        hi = min(lo + step, size + count)
        assert all(lo <= r[0] < hi for r in records + rules)  # (seq, ...)
        # Node (L, i) is completed by leaf (i + 1) * 2**L - 1: it is stored with that leaf.
        assert all(lo <= ((idx + 1) << level) - 1 < hi for level, idx, _ in nodes)
        seen["records"] += records
        seen["rules"] += rules
        seen["nodes"] += nodes
        seen["gone"] += gone
    assert seen["records"] == batch.record_rows
    assert seen["rules"] == batch.rule_rows
    assert sorted(seen["nodes"]) == sorted(batch.nodes)
    assert seen["gone"][: len(batch.duplicate_ids) + min(step, count)] == (
        batch.pending_ids[: min(step, count)] + batch.duplicate_ids
    )
    assert sorted(seen["gone"]) == sorted(batch.pending_ids + batch.duplicate_ids)


def test_a_batch_of_duplicates_only_is_one_chunk():
    batch = _batch(10, 0, 2)
    assert _chunks(batch, 16) == [(10, ([], [], [], [5000, 5001], None))]


@settings(max_examples=200)
@given(
    size=st.integers(0, 100),
    own=st.integers(0, 40),
    inbox=st.integers(0, 60),
    inbox_duplicates=st.frozensets(st.integers(0, 80), max_size=12),
    step=st.sampled_from([1, 3, 16]),
)
def test_the_inbox_mark_never_passes_a_record_a_later_chunk_stores(
    size, own, inbox, inbox_duplicates, step
):
    batch = _batch(size, own + inbox, 0, inbox, inbox_duplicates)
    chunks = _chunks(batch, step)
    rows = batch.inbox_rows
    mark = 0
    for lo, (_, _, _, gone, chunk_mark) in chunks:
        hi = min(lo + step, batch.new_size)
        assert all(pending is not None for pending in gone)  # inbox rows are swept, not deleted
        if chunk_mark is not None:
            assert chunk_mark > mark
            mark = chunk_mark
        # Everything up to the mark is stored by now or a duplicate; the next row is not.
        assert all(leaf < hi for i, leaf in rows if i <= mark)
        later = [leaf for i, leaf in rows if i > mark]
        assert not later or later[0] >= hi
    assert mark == (rows[-1][0] if rows else 0)


@pytest.mark.parametrize("leaf", [99, 3])
def test_a_row_outside_the_batch_is_an_error_not_misfiled(leaf):
    batch = _batch(4, 4, 0)  # leaves 4..7
    batch.nodes.append((0, leaf, b"x" * 32))
    with pytest.raises(AuditError, match=f"holds a row of leaf {leaf}"):
        _chunks(batch, 2)
