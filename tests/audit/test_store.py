from __future__ import annotations

import pytest
from audit_factories import append_and_sequence, make_outcome, make_record

from geopin.audit.checkpoint import SigningKey
from geopin.audit.proof import verify_bundle
from geopin.audit.store import AuditStore
from geopin.errors import AuditError, VerificationError


@pytest.fixture
def key():
    return SigningKey.generate("audit.test/geopin")


def test_proof_bundle_verifies_offline(engine, key):
    records = [make_record(n) for n in range(9)] + [make_outcome(4)]
    append_and_sequence(engine, records, key=key)
    store = AuditStore(engine)
    bundle = store.proof_bundle("dec-000004")
    assert bundle["seq"] == 4 and bundle["tree_size"] == 10
    assert bundle["record"] == records[4]
    checkpoint = verify_bundle(bundle, key.verifier())
    assert checkpoint.size == 10
    outcome = store.proof_bundle("dec-000004", kind="outcome")
    assert outcome["seq"] == 9 and verify_bundle(outcome, key.verifier()).size == 10


def test_a_tampered_bundle_fails(engine, key):
    append_and_sequence(engine, [make_record(n) for n in range(5)], key=key)
    bundle = AuditStore(engine).proof_bundle("dec-000002")
    bundle["record"]["processing_country"] = "US"
    with pytest.raises(VerificationError):
        verify_bundle(bundle, key.verifier())


def test_proof_uses_the_latest_covering_checkpoint(engine, key):
    append_and_sequence(engine, [make_record(n) for n in range(3)], key=key)
    append_and_sequence(engine, [make_record(n) for n in range(3, 6)], key=key)
    assert AuditStore(engine).proof_bundle("dec-000001")["tree_size"] == 6


def test_proof_errors_say_what_to_do(engine, key):
    store = AuditStore(engine)
    with pytest.raises(AuditError, match="no sequenced decision record for decision nope"):
        store.proof_bundle("nope")
    append_and_sequence(engine, [make_record(1)])  # sequenced, not checkpointed
    with pytest.raises(AuditError, match="not covered by a signed checkpoint"):
        store.proof_bundle("dec-000001")
    from audit_factories import add_pending

    add_pending(engine, [make_record(2)])
    with pytest.raises(AuditError, match="1 records are waiting to be sequenced"):
        store.proof_bundle("dec-000002")
    assert store.pending_count() == 1
