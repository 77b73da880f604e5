"""geopin.audit.merkle against published vectors and a plain RFC 9162 reference."""

from __future__ import annotations

import functools
import math
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    append,
    consistency_proof,
    frontier_from_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_needed_for_consistency,
    nodes_needed_for_frontier,
    nodes_needed_for_inclusion,
    root,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

try:
    import merkle_reference as ref
except ImportError:  # tests/audit collected as a package
    from . import merkle_reference as ref  # type: ignore[no-redef]

VECTORS = tomllib.loads((Path(__file__).parent / "merkle_vectors.toml").read_text())
DATA = [b"geopin leaf %d" % i for i in range(1100)]
SIZES = sorted({0, 1} | {2**p + d for p in range(1, 11) for d in (-1, 0, 1)})
NONEMPTY_SIZES = [n for n in SIZES if n]
OTHER_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


class Store:
    """Complete-subtree nodes as a store would hold them, counting every read."""

    def __init__(self, nodes: list[tuple[int, int, bytes]]) -> None:
        self.nodes = {(level, index): h for level, index, h in nodes}
        self.reads: list[tuple[int, int]] = []

    def get(self, level: int, index: int) -> bytes:
        self.reads.append((level, index))
        return self.nodes[(level, index)]


def _hex(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


@functools.cache
def _tree(n: int) -> tuple[Frontier, tuple[tuple[int, int, bytes], ...]]:
    frontier, nodes = append(Frontier.empty(), [leaf_hash(d) for d in DATA[:n]])
    return frontier, tuple(nodes)


def _store(n: int) -> Store:
    return Store(list(_tree(n)[1]))


def _log_bound(n: int) -> int:
    # A path has at most ceil(log2 n) siblings; the one right-edge sibling decomposes into at
    # most as many complete nodes again.
    return 2 * max(1, math.ceil(math.log2(max(n, 2))))


def _flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# ------------------------------------------------------------------------------------------------
# Known answers


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == VECTORS["roots"][0]
    assert root([]) == EMPTY_ROOT
    assert Frontier.empty().root() == EMPTY_ROOT


def test_vector_roots_for_every_prefix():
    leaves = [leaf_hash(d) for d in _hex(VECTORS["leaves"])]
    for n, want in enumerate(VECTORS["roots"]):
        assert root(leaves[:n]).hex() == want
        assert append(Frontier.empty(), leaves[:n])[0].root().hex() == want


def test_vector_nodes_are_exactly_the_completed_nodes():
    leaves = [leaf_hash(d) for d in _hex(VECTORS["leaves"])]
    _, nodes = append(Frontier.empty(), leaves)
    want = {(level, i): h for level, row in enumerate(VECTORS["nodes"]) for i, h in enumerate(row)}
    assert {(level, i): h.hex() for level, i, h in nodes} == want
    assert len(nodes) == len(want)


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}of{c['size']}")
def test_vector_inclusion_proofs(case):
    leaves = [leaf_hash(d) for d in _hex(VECTORS["leaves"])]
    store = Store(append(Frontier.empty(), leaves)[1])
    index, size, want = case["index"], case["size"], _hex(case["proof"])
    assert inclusion_proof(index, size, store.get) == want
    expected_root = bytes.fromhex(VECTORS["roots"][size])
    assert verify_inclusion(leaves[index], index, size, want, expected_root)


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['old_size']}to{c['new_size']}"
)
def test_vector_consistency_proofs(case):
    leaves = [leaf_hash(d) for d in _hex(VECTORS["leaves"])]
    store = Store(append(Frontier.empty(), leaves)[1])
    old, new, want = case["old_size"], case["new_size"], _hex(case["proof"])
    assert consistency_proof(old, new, store.get) == want
    roots = _hex(VECTORS["roots"])
    assert verify_consistency(old, new, roots[old], roots[new], want)


def test_hash_domain_separation():
    # A leaf can never pose as an interior node: the prefixes differ.
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(a + b) != node_hash(a, b)


# ------------------------------------------------------------------------------------------------
# Against the reference, over sizes around every power of two up to 2**10


@pytest.mark.parametrize("n", SIZES)
def test_root_and_nodes_match_reference(n):
    frontier, nodes = _tree(n)
    assert root([leaf_hash(d) for d in DATA[:n]]) == ref.mth(DATA[:n])
    assert frontier.root() == ref.mth(DATA[:n])
    assert frontier.size == n
    assert {(level, i): h for level, i, h in nodes} == ref.complete_nodes(DATA[:n])
    assert len(nodes) == len(ref.complete_nodes(DATA[:n]))  # no node emitted twice


@pytest.mark.parametrize("n", NONEMPTY_SIZES)
def test_inclusion_proof_for_every_index(n):
    want_root = ref.mth(DATA[:n])
    store = _store(n)
    for index in range(n):
        needed = nodes_needed_for_inclusion(index, n)
        assert len(needed) == len(set(needed)) <= _log_bound(n)
        store.reads.clear()
        proof = inclusion_proof(index, n, store.get)
        assert proof == ref.path(index, DATA[:n])
        assert set(store.reads) <= set(needed)  # a batch fetch of `needed` is enough
        assert verify_inclusion(leaf_hash(DATA[index]), index, n, proof, want_root)


@pytest.mark.parametrize("n", SIZES)
def test_frontier_from_stored_nodes(n):
    store = _store(n)
    frontier = frontier_from_nodes(n, store.get)
    assert frontier == _tree(n)[0]
    assert store.reads == nodes_needed_for_frontier(n)
    assert len(store.reads) == n.bit_count()


def _check_consistency(old: int, new: int) -> None:
    store = _store(new)
    needed = nodes_needed_for_consistency(old, new)
    assert len(needed) == len(set(needed)) <= _log_bound(new)
    proof = consistency_proof(old, new, store.get)
    assert set(store.reads) <= set(needed)
    assert proof == (ref.proof(old, DATA[:new]) if 0 < old < new else [])
    assert verify_consistency(old, new, ref.mth(DATA[:old]), ref.mth(DATA[:new]), proof)


def test_consistency_every_pair_of_small_sizes():
    for new in range(0, 41):
        for old in range(0, new + 1):
            _check_consistency(old, new)


def test_consistency_between_sizes_around_powers_of_two():
    for new in SIZES:
        for old in SIZES:
            if old <= new:
                _check_consistency(old, new)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_proofs_match_reference(data):
    n = data.draw(st.integers(1, len(DATA)), label="size")
    index = data.draw(st.integers(0, n - 1), label="index")
    old = data.draw(st.integers(0, n), label="old size")
    store = _store(n)
    assert inclusion_proof(index, n, store.get) == ref.path(index, DATA[:n])
    _check_consistency(old, n)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300).flatmap(lambda end: st.tuples(st.integers(0, end), st.just(end))))
def test_subtree_hash_of_any_range(bounds):
    start, end = bounds
    store = _store(300)
    assert subtree_hash(start, end, store.get) == ref.mth(DATA[start:end])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=25))
def test_batch_splits_do_not_matter(batches):
    n = sum(batches)
    leaves = [leaf_hash(d) for d in DATA[:n]]
    frontier, nodes, offset = Frontier.empty(), [], 0
    for size in batches:
        frontier, new_nodes = append(frontier, leaves[offset : offset + size])
        nodes += new_nodes
        offset += size
    one_by_one, single_nodes = Frontier.empty(), []
    for leaf in leaves:
        one_by_one, new_nodes = append(one_by_one, [leaf])
        single_nodes += new_nodes
    assert frontier == one_by_one == _tree(n)[0]
    assert nodes == single_nodes == list(_tree(n)[1])
    assert frontier.root() == ref.mth(DATA[:n])


def test_extended_matches_append():
    leaves = [leaf_hash(d) for d in DATA[:77]]
    assert Frontier.empty().extended(leaves) == append(Frontier.empty(), leaves)[0]


# ------------------------------------------------------------------------------------------------
# Tampering and malformed input: verification says False, never raises

TAMPER_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33]


def _inclusion_probes(index, n, proof, leaf, good_root):
    probes = {
        "index - 1": (leaf, index - 1, n, proof, good_root),
        "index + 1": (leaf, index + 1, n, proof, good_root),
        "index ^ 2": (leaf, index ^ 2, n, proof, good_root),
        "size * 2": (leaf, index, n * 2, proof, good_root),
        "size // 2": (leaf, index, n // 2, proof, good_root),
        "wrong leaf": (OTHER_HASH, index, n, proof, good_root),
        "empty root": (leaf, index, n, proof, EMPTY_ROOT),
        "other root": (leaf, index, n, proof, OTHER_HASH),
        "trailing root": (leaf, index, n, [*proof, good_root], good_root),
        "preceding root": (leaf, index, n, [good_root, *proof], good_root),
        "trailing empty": (leaf, index, n, [*proof, b""], good_root),
    }
    # The same proof offered for the neighbouring trees (with their real roots).
    for other in (n - 1, n + 1):
        if other > index:
            probes[f"tree of size {other}"] = (leaf, index, other, proof, ref.mth(DATA[:other]))
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i])
        probes[f"flipped proof[{i}]"] = (leaf, index, n, bad, good_root)
    if proof:
        probes["removed last"] = (leaf, index, n, proof[:-1], good_root)
    if len(proof) > 1:
        probes["inserted"] = (leaf, index, n, [proof[0], OTHER_HASH, *proof[1:]], good_root)
    return probes


@pytest.mark.parametrize("n", TAMPER_SIZES)
def test_tampered_inclusion_proofs_fail(n):
    good_root = ref.mth(DATA[:n])
    store = _store(n)
    for index in range(n):
        leaf = leaf_hash(DATA[index])
        proof = inclusion_proof(index, n, store.get)
        assert verify_inclusion(leaf, index, n, proof, good_root)
        for desc, args in _inclusion_probes(index, n, proof, leaf, good_root).items():
            assert verify_inclusion(*args) is False, f"index {index} of {n}: {desc} verified"


def _consistency_probes(old, new, proof, root1, root2):
    probes = {
        "old - 1": (old - 1, new, root1, root2, proof),
        "old + 1": (old + 1, new, root1, root2, proof),
        "old ^ 2": (old ^ 2, new, root1, root2, proof),
        "new * 2": (old, new * 2, root1, root2, proof),
        "new // 2": (old, new // 2, root1, root2, proof),
        "wrong old root": (old, new, OTHER_HASH, root2, proof),
        "wrong new root": (old, new, root1, OTHER_HASH, proof),
        "swapped roots": (old, new, root2, root1, proof),
        "empty proof": (old, new, root1, root2, []),
        "trailing root1": (old, new, root1, root2, [*proof, root1]),
        "trailing root2": (old, new, root1, root2, [*proof, root2]),
        "preceding root1": (old, new, root1, root2, [root1, *proof]),
        "preceding root2": (old, new, root1, root2, [root2, *proof]),
        "preceding proof[0]": (old, new, root1, root2, [proof[0], *proof]),
        "truncated": (old, new, root1, root2, proof[:-1]),
        "trailing empty": (old, new, root1, root2, [*proof, b""]),
    }
    for other in (new - 1, new + 1):
        if other > old:
            probes[f"new tree of size {other}"] = (old, other, root1, ref.mth(DATA[:other]), proof)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i], 4)
        probes[f"flipped proof[{i}]"] = (old, new, root1, root2, bad)
    return probes


def test_tampered_consistency_proofs_fail():
    for new in range(2, 34):
        store = _store(new)
        for old in range(1, new):
            root1, root2 = ref.mth(DATA[:old]), ref.mth(DATA[:new])
            proof = consistency_proof(old, new, store.get)
            assert verify_consistency(old, new, root1, root2, proof)
            for desc, args in _consistency_probes(old, new, proof, root1, root2).items():
                assert verify_consistency(*args) is False, f"{old}->{new}: {desc} verified"


def test_trivial_consistency_cases():
    r1, r2 = ref.mth(DATA[:1]), ref.mth(DATA[:2])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, ref.mth(DATA[:5]), [])
    assert verify_consistency(1, 1, r1, r1, [])
    assert not verify_consistency(0, 5, r1, ref.mth(DATA[:5]), [])  # the empty tree has one root
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(1, 1, r1, r2, [])
    assert not verify_consistency(1, 1, r1, r1, [r1])
    assert not verify_consistency(2, 1, r2, r1, [])  # time travel
    assert not verify_consistency(1, 2, r1, r2, [])


def test_inclusion_in_empty_or_wrong_trees_fails():
    leaf = leaf_hash(DATA[0])
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1)]:
        assert not verify_inclusion(leaf, index, size, [], leaf)
        assert not verify_inclusion(leaf, index, size, [], EMPTY_ROOT)
    assert verify_inclusion(leaf, 0, 1, [], leaf)  # a one-leaf tree's root is its leaf


_garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.lists(st.binary(max_size=40), max_size=4),
    st.floats(allow_nan=True),
)


@settings(max_examples=300)
@given(_garbage, _garbage, _garbage, _garbage, _garbage)
def test_verify_inclusion_never_raises(leaf, index, size, proof, root_hash):
    assert verify_inclusion(leaf, index, size, proof, root_hash) in (True, False)


@settings(max_examples=300)
@given(_garbage, _garbage, _garbage, _garbage, _garbage)
def test_verify_consistency_never_raises(old, new, root1, root2, proof):
    assert verify_consistency(old, new, root1, root2, proof) in (True, False)


def test_malformed_arguments_with_a_valid_proof_fail():
    n, index = 9, 4
    leaf, good_root = leaf_hash(DATA[index]), ref.mth(DATA[:n])
    proof = inclusion_proof(index, n, _store(n).get)
    assert verify_inclusion(leaf, index, n, proof, good_root)
    assert not verify_inclusion(leaf[:31], index, n, proof, good_root)
    assert not verify_inclusion(leaf, index, n, proof, good_root + b"\x00")
    assert not verify_inclusion(leaf, index, n, [proof[0][:31], *proof[1:]], good_root)
    assert not verify_inclusion(leaf, index, n, [proof[0].hex(), *proof[1:]], good_root)
    assert not verify_inclusion(leaf, True, n, proof, good_root)
    assert not verify_inclusion(leaf, -1, n, proof, good_root)
    assert not verify_inclusion(leaf, index, "9", proof, good_root)
    assert not verify_inclusion(leaf, index, n, None, good_root)
    cproof = consistency_proof(3, n, _store(n).get)
    r3 = ref.mth(DATA[:3])
    assert verify_consistency(3, n, r3, good_root, cproof)
    assert not verify_consistency(3, n, r3[:31], good_root, cproof)
    assert not verify_consistency(3, n, r3, good_root, [cproof[0] + b"\x00", *cproof[1:]])
    assert not verify_consistency(-3, n, r3, good_root, cproof)
    assert not verify_consistency(3, n, r3, good_root, None)


# ------------------------------------------------------------------------------------------------
# Generation refuses impossible requests; frontiers validate themselves


def test_proof_generation_rejects_impossible_arguments():
    store = _store(8)
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(8, 8, store.get)
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_proof(-1, 8, store.get)
    with pytest.raises(ValueError, match="not in a tree"):
        nodes_needed_for_inclusion(0, 0)
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_proof(5, 4, store.get)
    with pytest.raises(ValueError, match="invalid leaf range"):
        subtree_hash(5, 4, store.get)
    assert subtree_hash(3, 3, store.get) == EMPTY_ROOT


def test_frontier_rejects_inconsistent_state():
    h = leaf_hash(b"x")
    with pytest.raises(ValueError, match="has 1 frontier hashes"):
        Frontier(2, (h, h))
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier(1, (h[:16],))
    with pytest.raises(ValueError, match="non-negative"):
        Frontier(-1, ())
    with pytest.raises(ValueError, match="leaf hash 3"):
        append(_tree(3)[0], [b"short"])
    assert Frontier(1, [bytearray(h)]).hashes == (h,)


def test_append_reads_no_store_and_returns_nodes_in_completion_order():
    leaves = [leaf_hash(d) for d in DATA[:4]]
    _, nodes = append(Frontier.empty(), leaves)
    assert [(level, i) for level, i, _ in nodes] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 2),
        (0, 3),
        (1, 1),
        (2, 0),
    ]


def test_append_ten_thousand_leaves_is_fast():
    leaves = [leaf_hash(b"%d" % i) for i in range(10_000)]
    start = _tree(1000)[0]
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        append(start, leaves)
        timings.append(time.perf_counter() - t0)
    assert min(timings) < 0.050, f"append of 10,000 leaves took {min(timings) * 1000:.1f} ms"
