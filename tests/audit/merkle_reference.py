"""A plain Merkle tree straight from RFC 9162 section 2.1, to check geopin.audit.merkle against.

Deliberately naive: it works on the leaf DATA, recomputes everything from the definitions on
every call and shares no code with the module under test.
"""

from __future__ import annotations

import functools
import hashlib


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    """MTH(D[n]), section 2.1.1."""
    return _mth(tuple(d))


@functools.cache  # memoised only so that every index of a 1025-leaf tree stays quick
def _mth(d: tuple[bytes, ...]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]), section 2.1.3.1."""
    n = len(d)
    if n == 1 and m == 0:
        return []
    k = _k(n)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), section 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return _subproof(m, d[:k], b) + [mth(d[k:])]
    return _subproof(m - k, d[k:], False) + [mth(d[:k])]


def proof(m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m < n, section 2.1.4.1."""
    assert 0 < m < len(d)
    return _subproof(m, d, True)


def complete_nodes(d: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every complete subtree (level, index) -> MTH, by the definition of the node address."""
    nodes = {}
    level = 0
    while 2**level <= len(d):
        width = 2**level
        for i in range(len(d) // width):
            nodes[(level, i)] = mth(d[i * width : (i + 1) * width])
        level += 1
    return nodes
