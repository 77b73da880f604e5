"""Proof bundles: one audit record with everything needed to check it offline.

A bundle is a JSON object::

    {
      "format": "geopin-audit-proof/1",
      "record": {...},                  # the record, as stored
      "seq": 1234,                      # its 0-based position in the log = its leaf index
      "leaf_hash": "<hex>",             # leaf_hash(canonical_json(record))
      "tree_size": 5000,                # the size of the signed tree the proof is for
      "inclusion_proof": ["<hex>", ...],
      "checkpoint": "<signed note>"     # the C2SP checkpoint for tree_size, signed by the log
    }

``verify_bundle`` needs only the log's verifier key: it opens the checkpoint, re-canonicalises
the record, recomputes its leaf hash and walks the inclusion proof up to the signed root.
Every failure is a ``VerificationError`` whose message starts with the part that failed
(``checkpoint``, ``record``, ``leaf_hash``, ``seq``, ``tree_size``, ``inclusion_proof``).

``seq`` is the record's leaf index (0 for the first record): the store numbers records from 0 so
that sequence number and leaf index are the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import cast

from geopin.audit.canonical import canonical_json
from geopin.audit.checkpoint import Checkpoint, VerifierKey, unverified_checkpoint
from geopin.audit.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from geopin.errors import VerificationError

__all__ = ["BUNDLE_FORMAT", "make_bundle", "verify_bundle"]

BUNDLE_FORMAT = "geopin-audit-proof/1"
_HEX_HASH = re.compile(f"[0-9a-f]{{{2 * HASH_SIZE}}}")
_FIELDS = ("format", "record", "seq", "leaf_hash", "tree_size", "inclusion_proof", "checkpoint")


def make_bundle(record_body: bytes, seq: int, proof: Sequence[bytes], note: str) -> dict:
    """Assemble the bundle for the record stored as ``record_body`` at ``seq``.

    Checks what it can without the key, so a bundle that could never verify is refused here
    (``ValueError``) rather than handed to an auditor: the body must be canonical JSON and the
    proof must lead from its leaf hash to the root the note claims.
    """
    if not isinstance(record_body, bytes):
        raise TypeError(f"record_body must be bytes, not {type(record_body).__name__}")
    try:
        record = json.loads(record_body)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"record body is not JSON: {exc}") from exc
    if canonical_json(record) != record_body:
        raise ValueError("record body is not in canonical form; its leaf hash would not match")
    try:
        cp = unverified_checkpoint(note)
    except ValueError as exc:
        raise ValueError(f"checkpoint note is malformed: {exc}") from exc
    leaf = leaf_hash(record_body)
    if not verify_inclusion(leaf, seq, cp.size, proof, cp.root):
        raise ValueError(f"the proof does not put seq {seq} under the root of tree size {cp.size}")
    return {
        "format": BUNDLE_FORMAT,
        "record": record,
        "seq": seq,
        "leaf_hash": leaf.hex(),
        "tree_size": cp.size,
        "inclusion_proof": [bytes(p).hex() for p in proof],
        "checkpoint": note,
    }


def _field(bundle: dict, name: str, kind: type) -> object:
    if name not in bundle:
        raise VerificationError(f"{name}: missing from the bundle")
    value = bundle[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise VerificationError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _int(bundle: dict, name: str) -> int:
    return cast(int, _field(bundle, name, int))


def _str(bundle: dict, name: str) -> str:
    return cast(str, _field(bundle, name, str))


def _hash(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise VerificationError(f"{where}: not a {HASH_SIZE}-byte lowercase hex hash")
    return bytes.fromhex(value)


def verify_bundle(bundle: dict, verifier: VerifierKey) -> Checkpoint:
    """Check a bundle offline; return the signed checkpoint it is proven against.

    Raises ``VerificationError`` naming the first thing that failed.
    """
    if not isinstance(bundle, dict):
        raise VerificationError(f"bundle: expected a JSON object, got {type(bundle).__name__}")
    unknown = sorted(set(bundle) - set(_FIELDS))
    if unknown:
        raise VerificationError(f"bundle: unexpected field(s) {', '.join(unknown)}")
    if _str(bundle, "format") != BUNDLE_FORMAT:
        raise VerificationError(
            f"format: {bundle['format']!r} is not a supported bundle format ({BUNDLE_FORMAT})"
        )
    note = _str(bundle, "checkpoint")
    seq = _int(bundle, "seq")
    tree_size = _int(bundle, "tree_size")
    proof_hex = cast(list, _field(bundle, "inclusion_proof", list))
    claimed_leaf = _hash(_str(bundle, "leaf_hash"), "leaf_hash")
    record = _field(bundle, "record", dict)

    try:
        cp = verifier.open(note)
    except VerificationError as exc:
        raise VerificationError(f"checkpoint: {exc}") from exc
    if tree_size != cp.size:
        raise VerificationError(
            f"tree_size: the bundle says {tree_size} but the signed checkpoint is for {cp.size}"
        )
    if not 0 <= seq < cp.size:
        raise VerificationError(f"seq: {seq} is not in the signed tree of size {cp.size}")

    try:
        body = canonical_json(record)
    except (TypeError, ValueError) as exc:
        raise VerificationError(f"record: cannot be canonicalised: {exc}") from exc
    leaf = leaf_hash(body)
    if leaf != claimed_leaf:
        raise VerificationError(
            f"record: its leaf hash {leaf.hex()} differs from the bundle's leaf_hash"
            f" {claimed_leaf.hex()}; the record was altered"
        )

    proof = [_hash(p, f"inclusion_proof[{i}]") for i, p in enumerate(proof_hex)]
    if not verify_inclusion(leaf, seq, cp.size, proof, cp.root):
        raise VerificationError(
            f"inclusion_proof: does not lead from the leaf at seq {seq} to the signed root"
            f" of tree size {cp.size}"
        )
    return cp
