"""geopin.audit.proof: self-contained proof bundles, checked offline with only the public key."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit.canonical import canonical_json
from geopin.audit.checkpoint import Checkpoint, SigningKey
from geopin.audit.merkle import Frontier, append, inclusion_proof, leaf_hash
from geopin.audit.proof import BUNDLE_FORMAT, make_bundle, verify_bundle
from geopin.errors import VerificationError

ORIGIN = "geopin.example/audit"
KEY = SigningKey.generate(ORIGIN)


def make_record(i: int, **overrides) -> dict:
    record = {
        "v": 1,
        "kind": "decision",
        "id": f"0190a5e4-7c3b-7d2e-8f00-{i:012d}",
        "time": "2026-11-27T02:30:00.123456Z",
        "tenant": "acme",
        "model": "large-1",
        "country": "DE",
        "subdivision": "DE-BY",
        "action": "route",
        "rules": ["eu-only"],
        "endpoint": "eu-central",
        "latency_us": 1200 + i,
    }
    return record | overrides


class Log:
    """An in-memory log built with the same primitives the store uses."""

    def __init__(self, records: list[dict], key: SigningKey = KEY) -> None:
        self.bodies = [canonical_json(r) for r in records]
        frontier, nodes = append(Frontier.empty(), [leaf_hash(b) for b in self.bodies])
        self.nodes = {(level, i): h for level, i, h in nodes}
        self.size = frontier.size
        self.note = key.sign(Checkpoint(ORIGIN, frontier.size, frontier.root()))

    def proof(self, seq: int) -> list[bytes]:
        return inclusion_proof(seq, self.size, lambda level, i: self.nodes[(level, i)])

    def bundle(self, seq: int) -> dict:
        return make_bundle(self.bodies[seq], seq, self.proof(seq), self.note)


LOG = Log([make_record(i) for i in range(13)])


def _rejected(bundle: dict, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify_bundle(bundle, KEY.verifier())


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_every_record_verifies(n):
    log = Log([make_record(i) for i in range(n)])
    for seq in range(n):
        bundle = log.bundle(seq)
        cp = verify_bundle(bundle, KEY.verifier())
        assert (cp.origin, cp.size) == (ORIGIN, n)
        assert bundle["record"] == make_record(seq)


def test_bundle_shape_is_plain_json():
    bundle = LOG.bundle(5)
    assert set(bundle) == {
        "format",
        "record",
        "seq",
        "leaf_hash",
        "tree_size",
        "inclusion_proof",
        "checkpoint",
    }
    assert bundle["format"] == BUNDLE_FORMAT
    assert bundle["seq"] == 5
    assert bundle["tree_size"] == 13
    assert bundle["leaf_hash"] == leaf_hash(LOG.bodies[5]).hex()
    assert bundle["inclusion_proof"] == [p.hex() for p in LOG.proof(5)]
    assert bundle["checkpoint"] == LOG.note
    # Through a file and back, as an auditor receives it.
    assert verify_bundle(json.loads(json.dumps(bundle, indent=2)), KEY.verifier()).size == 13


def test_modified_record():
    bundle = LOG.bundle(4)
    bundle["record"]["country"] = "US"
    _rejected(bundle, r"^record: its leaf hash [0-9a-f]{64} differs .* the record was altered")


def test_modified_record_with_recomputed_leaf_hash():
    bundle = LOG.bundle(4)
    bundle["record"]["endpoint"] = "us-east"
    bundle["leaf_hash"] = leaf_hash(canonical_json(bundle["record"])).hex()
    _rejected(bundle, r"^inclusion_proof: does not lead from the leaf at seq 4 to the signed root")


def test_record_that_cannot_be_canonicalised():
    bundle = LOG.bundle(4)
    bundle["record"]["latency_us"] = 1.5
    _rejected(bundle, r"^record: cannot be canonicalised: .*float")


@pytest.mark.parametrize("element", [0, 1, -1])
def test_modified_proof_element(element):
    bundle = LOG.bundle(6)
    digits = bundle["inclusion_proof"][element]
    bundle["inclusion_proof"][element] = ("1" if digits[0] == "0" else "0") + digits[1:]
    _rejected(bundle, r"^inclusion_proof: does not lead")


def test_proof_elements_removed_added_or_malformed():
    bundle = LOG.bundle(6)
    shorter = copy.deepcopy(bundle)
    shorter["inclusion_proof"].pop()
    _rejected(shorter, r"^inclusion_proof: does not lead")
    longer = copy.deepcopy(bundle)
    longer["inclusion_proof"].append("00" * 32)
    _rejected(longer, r"^inclusion_proof: does not lead")
    bad = copy.deepcopy(bundle)
    bad["inclusion_proof"][1] = bad["inclusion_proof"][1][:-2]
    _rejected(bad, r"^inclusion_proof\[1\]: not a 32-byte lowercase hex hash")
    upper = copy.deepcopy(bundle)
    upper["inclusion_proof"][0] = upper["inclusion_proof"][0].upper()
    _rejected(upper, r"^inclusion_proof\[0\]: not a 32-byte")


def test_checkpoint_signed_by_another_key():
    impostor = Log([make_record(i) for i in range(13)], key=SigningKey.generate(ORIGIN))
    _rejected(impostor.bundle(2), r"^checkpoint: note is signed by a different key named")
    foreign = Log([make_record(i) for i in range(13)], key=SigningKey.generate("other.example"))
    _rejected(foreign.bundle(2), r"^checkpoint: note has no signature by 'geopin.example/audit'")


def test_checkpoint_note_altered():
    bundle = LOG.bundle(2)
    bundle["checkpoint"] = bundle["checkpoint"].replace("\n13\n", "\n12\n")
    bundle["tree_size"] = 12
    _rejected(bundle, r"^checkpoint: signature by .* does not verify")


def test_tree_size_does_not_match_the_checkpoint():
    bundle = LOG.bundle(2)
    bundle["tree_size"] = 14
    _rejected(bundle, r"^tree_size: the bundle says 14 but the signed checkpoint is for 13")


def test_proof_against_a_different_signed_tree():
    newer = Log([make_record(i) for i in range(20)])
    bundle = LOG.bundle(2)
    bundle["checkpoint"] = newer.note  # a genuine checkpoint, but not the proof's tree
    _rejected(bundle, r"^tree_size: the bundle says 13 but the signed checkpoint is for 20")
    bundle["tree_size"] = 20
    _rejected(bundle, r"^inclusion_proof: does not lead from the leaf at seq 2")


def test_wrong_seq():
    bundle = LOG.bundle(3)
    bundle["seq"] = 2
    _rejected(bundle, r"^inclusion_proof: does not lead from the leaf at seq 2")
    bundle["seq"] = 13
    _rejected(bundle, r"^seq: 13 is not in the signed tree of size 13")
    bundle["seq"] = -1
    _rejected(bundle, r"^seq: -1 is not in the signed tree")


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda b: b.pop("record"), r"^record: missing from the bundle"),
        (lambda b: b.pop("checkpoint"), r"^checkpoint: missing"),
        (lambda b: b.update(seq="3"), r"^seq: expected int, got str"),
        (lambda b: b.update(seq=True), r"^seq: expected int, got bool"),
        (lambda b: b.update(tree_size=13.0), r"^tree_size: expected int, got float"),
        (lambda b: b.update(record=[1]), r"^record: expected dict, got list"),
        (lambda b: b.update(inclusion_proof="00"), r"^inclusion_proof: expected list"),
        (lambda b: b.update(leaf_hash="zz"), r"^leaf_hash: not a 32-byte lowercase hex hash"),
        (lambda b: b.update(format="geopin-audit-proof/9"), r"^format: 'geopin-audit-proof/9'"),
        (lambda b: b.update(served_in="DE"), r"^bundle: unexpected field\(s\) served_in"),
    ],
)
def test_malformed_bundles(edit, reason):
    bundle = LOG.bundle(1)
    edit(bundle)
    _rejected(bundle, reason)


def test_not_a_bundle():
    _rejected([LOG.bundle(1)], r"^bundle: expected a JSON object, got list")  # type: ignore[arg-type]


def test_make_bundle_refuses_what_could_never_verify():
    body, proof = LOG.bodies[3], LOG.proof(3)
    with pytest.raises(ValueError, match="not in canonical form"):
        make_bundle(json.dumps(make_record(3)).encode(), 3, proof, LOG.note)
    with pytest.raises(ValueError, match="not JSON"):
        make_bundle(b"{oops", 3, proof, LOG.note)
    with pytest.raises(ValueError, match="does not put seq 4 under the root of tree size 13"):
        make_bundle(body, 4, proof, LOG.note)
    with pytest.raises(ValueError, match="does not put seq 3"):
        make_bundle(body, 3, proof[:-1], LOG.note)
    with pytest.raises(ValueError, match="checkpoint note is malformed: .* newline"):
        make_bundle(body, 3, proof, "not a note")
    with pytest.raises(TypeError, match="must be bytes"):
        make_bundle(body.decode(), 3, proof, LOG.note)  # type: ignore[arg-type]


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=12)
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=6), _values, max_size=6), min_size=1, max_size=40),
    st.data(),
)
def test_any_log_any_record_verifies_and_any_edit_is_caught(records, data):
    log = Log(records)
    seq = data.draw(st.integers(0, len(records) - 1), label="seq")
    bundle = log.bundle(seq)
    assert verify_bundle(bundle, KEY.verifier()).size == len(records)
    key = data.draw(st.text(max_size=6), label="key")
    value = data.draw(_values, label="value")
    edited = copy.deepcopy(bundle)
    edited["record"][key] = value
    if canonical_json(edited["record"]) == canonical_json(bundle["record"]):
        assert verify_bundle(edited, KEY.verifier()).size == len(records)  # nothing changed
    else:
        _rejected(edited, r"^record: its leaf hash")
