"""The audit log's Merkle tree: RFC 9162 section 2.1 hashing, proofs and their verification.

Leaves enter the tree as leaf hashes (``leaf_hash(canonical_json(record))``). The store keeps
only hashes of COMPLETE subtrees, addressed by ``(level, index)``: level 0 holds the leaf hashes
and node ``(level, i)`` covers leaves ``[i * 2**level, (i + 1) * 2**level)``. Every subtree a
proof needs is either complete or ends at the right edge of the tree, and a right-edge subtree
is a chain of at most log2(n) complete ones, so a proof costs O(log n) node reads.

A store reads nodes through a ``NodeReader``, ``get_node(level, index) -> hash``. To read them
in one query, ask ``nodes_needed_for_inclusion`` / ``nodes_needed_for_consistency`` /
``nodes_needed_for_frontier`` first, fetch those into a dict and pass its ``__getitem__``: the
proof functions read exactly those nodes and no others.

Generating a proof for impossible arguments (an index outside the tree, an old size above the
new one) raises ``ValueError``. Verifying never raises: any malformed input (a hash of the wrong
length, a negative or out-of-range index, a proof of the wrong length, a non-bytes element) makes
the ``verify_*`` functions return False.

Beyond the shared contract this module also offers ``nodes_needed_for_frontier(size)`` and
``Frontier.empty()``. ``verify_consistency`` with ``old_size == 0`` requires the empty proof and
``old_root == EMPTY_ROOT`` (RFC 9162 leaves that case open; the empty tree's root is known).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "NodeReader",
    "append",
    "consistency_proof",
    "frontier_from_nodes",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_needed_for_consistency",
    "nodes_needed_for_frontier",
    "nodes_needed_for_inclusion",
    "root",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeReader = Callable[[int, int], bytes]
_Range = tuple[int, int]  # leaves [start, end)

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2): where MTH splits."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_hash(value: object) -> TypeGuard[bytes | bytearray | memoryview]:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) == HASH_SIZE


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_hash(value: object, what: str) -> bytes:
    if not _is_hash(value):
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {value!r:.80}")
    return bytes(value)


# ---------------------------------------------------------------------------------------------
# Root over a list of leaf hashes (the reference, O(n) time and O(log n) memory)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over ``leaf_hashes`` (already leaf-hashed), computed in one pass."""
    return Frontier.empty().extended(leaf_hashes).root()


# ---------------------------------------------------------------------------------------------
# Subtrees built from stored complete nodes


def _range_nodes(start: int, end: int, out: list[tuple[int, int]]) -> None:
    """Append, left to right, the complete nodes whose hashes make up MTH of [start, end)."""
    while True:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:  # complete and aligned: one stored node
            level = n.bit_length() - 1
            out.append((level, start >> level))
            return
        k = _split(n)
        _range_nodes(start, start + k, out)
        start += k


def _subtree(start: int, end: int, get_node: NodeReader) -> bytes:
    n = end - start
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return get_node(level, start >> level)
    k = _split(n)
    return node_hash(_subtree(start, start + k, get_node), _subtree(start + k, end, get_node))


def subtree_hash(start: int, end: int, get_node: NodeReader) -> bytes:
    """MTH of leaves ``[start, end)`` built from stored complete nodes (EMPTY_ROOT if empty)."""
    if not 0 <= start <= end:
        raise ValueError(f"invalid leaf range [{start}, {end})")
    if start == end:
        return EMPTY_ROOT
    return _subtree(start, end, get_node)


def _nodes_for_ranges(ranges: Iterable[_Range]) -> list[tuple[int, int]]:
    nodes: list[tuple[int, int]] = []
    for start, end in ranges:
        _range_nodes(start, end, nodes)
    return list(dict.fromkeys(nodes))  # a node can serve two ranges; fetch it once


# ---------------------------------------------------------------------------------------------
# Inclusion proofs (RFC 9162 section 2.1.3)


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    """The subtrees whose hashes form PATH(index, D[size]), leaf to root."""
    if not (_is_count(index) and _is_count(size) and index < size):
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[_Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()  # collected root first; the proof lists the leaf's sibling first
    return ranges


def nodes_needed_for_inclusion(index: int, size: int) -> list[tuple[int, int]]:
    """The stored nodes ``inclusion_proof(index, size, ...)`` reads, to fetch in one query."""
    return _nodes_for_ranges(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, get_node: NodeReader) -> list[bytes]:
    """The audit path for leaf ``index`` in the tree of ``size`` leaves."""
    return [_subtree(start, end, get_node) for start, end in _inclusion_ranges(index, size)]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` put ``leaf`` (a leaf hash) under ``root``?"""
    try:
        if not (_is_count(index) and _is_count(size) and index < size):
            return False
        if not (_is_hash(leaf) and _is_hash(root)):
            return False
        fn, sn = index, size - 1
        r = bytes(leaf)
        for p in proof:
            if sn == 0 or not _is_hash(p):
                return False
            p = bytes(p)
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                r = node_hash(r, p)
            fn >>= 1
            sn >>= 1
        return sn == 0 and r == bytes(root)
    except TypeError:  # ``proof`` not iterable, or similar nonsense
        return False


# ---------------------------------------------------------------------------------------------
# Consistency proofs (RFC 9162 section 2.1.4)


def _consistency_ranges(old_size: int, new_size: int) -> list[_Range]:
    """The subtrees whose hashes form PROOF(old_size, D[new_size]), in proof order."""
    if not (_is_count(old_size) and _is_count(new_size) and old_size <= new_size):
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    # SUBPROOF(m, D[start:end], b), unrolled: each step emits one sibling subtree.
    suffix: list[_Range] = []
    m, start, end, whole_old_tree = old_size, 0, new_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            suffix.append((start + k, end))
            end = start + k
        else:
            suffix.append((start, start + k))
            m -= k
            start += k
            whole_old_tree = False
    head = [] if whole_old_tree else [(start, end)]
    return head + suffix[::-1]


def nodes_needed_for_consistency(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The stored nodes ``consistency_proof(old_size, new_size, ...)`` reads."""
    return _nodes_for_ranges(_consistency_ranges(old_size, new_size))


def consistency_proof(old_size: int, new_size: int, get_node: NodeReader) -> list[bytes]:
    """PROOF(old_size, D[new_size]): the tree of ``new_size`` leaves extends the older one."""
    return [
        _subtree(start, end, get_node) for start, end in _consistency_ranges(old_size, new_size)
    ]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: is the tree (new_size, new_root) an extension of the old one?"""
    try:
        if not (_is_count(old_size) and _is_count(new_size) and old_size <= new_size):
            return False
        if not (_is_hash(old_root) and _is_hash(new_root)):
            return False
        old_root, new_root = bytes(old_root), bytes(new_root)
        path = list(proof)
        if old_size == 0:
            return not path and old_root == EMPTY_ROOT
        if old_size == new_size:
            return not path and old_root == new_root
        if not path or not all(_is_hash(p) for p in path):
            return False
        path = [bytes(p) for p in path]
        if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree of the new
            path.insert(0, old_root)
        fn, sn = old_size - 1, new_size - 1
        while fn & 1:
            fn >>= 1
            sn >>= 1
        fr = sr = path[0]
        for c in path[1:]:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                fr = node_hash(c, fr)
                sr = node_hash(c, sr)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                sr = node_hash(sr, c)
            fn >>= 1
            sn >>= 1
        return sn == 0 and fr == old_root and sr == new_root
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------------
# The right edge of the tree, and appending to it


@dataclass(frozen=True)
class Frontier:
    """The hashes of the maximal complete subtrees of a tree of ``size`` leaves, left to right.

    There is one per set bit of ``size``, largest first; together they determine the root and
    are all that appending needs.
    """

    size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not _is_count(self.size):
            raise ValueError(f"frontier size must be a non-negative integer, got {self.size!r}")
        if len(self.hashes) != self.size.bit_count():
            raise ValueError(
                f"a tree of size {self.size} has {self.size.bit_count()} frontier hashes,"
                f" got {len(self.hashes)}"
            )
        hashes = tuple(_check_hash(h, f"frontier hash {i}") for i, h in enumerate(self.hashes))
        object.__setattr__(self, "hashes", hashes)  # immutable bytes, even if given a list

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, ())

    def root(self) -> bytes:
        """MTH of the whole tree: the frontier folded from the right."""
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def extended(self, leaf_hashes: Sequence[bytes]) -> Frontier:
        """The frontier after appending ``leaf_hashes``, without listing the new nodes."""
        return _append(self, leaf_hashes, None)


def _append(
    frontier: Frontier, leaf_hashes: Sequence[bytes], completed: list[tuple[int, int, bytes]] | None
) -> Frontier:
    # This loop is the sequencer's hot path: keep lookups local.
    sha256 = _sha256
    stack = list(frontier.hashes)
    push, pop = stack.append, stack.pop
    emit = completed.append if completed is not None else None
    size = frontier.size
    for h in leaf_hashes:
        if type(h) is not bytes or len(h) != HASH_SIZE:
            h = _check_hash(h, f"leaf hash {size}")
        if emit is not None:
            emit((0, size, h))
        index, level = size, 0
        # Each trailing 1 bit of the old size is a complete subtree the new leaf closes.
        while index & 1:
            h = sha256(b"\x01" + pop() + h).digest()
            index >>= 1
            level += 1
            if emit is not None:
                emit((level, index, h))
        push(h)
        size += 1
    return Frontier(size, tuple(stack))


def append(
    frontier: Frontier, new_leaf_hashes: Sequence[bytes]
) -> tuple[Frontier, list[tuple[int, int, bytes]]]:
    """Append leaf hashes; return the new frontier and every newly completed node.

    The nodes are ``(level, index, hash)`` with level 0 for the leaves themselves, in the order
    they complete. Storing them all is what lets proofs read only O(log n) nodes.
    """
    completed: list[tuple[int, int, bytes]] = []
    return _append(frontier, new_leaf_hashes, completed), completed


def nodes_needed_for_frontier(size: int) -> list[tuple[int, int]]:
    """The stored nodes that make up the frontier of a tree of ``size`` leaves, left to right."""
    if not _is_count(size):
        raise ValueError(f"tree size must be a non-negative integer, got {size!r}")
    nodes: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def frontier_from_nodes(size: int, get_node: NodeReader) -> Frontier:
    """Rebuild the frontier of a stored tree of ``size`` leaves (one read per set bit)."""
    hashes = tuple(get_node(level, index) for level, index in nodes_needed_for_frontier(size))
    return Frontier(size, hashes)
