"""Invariants over any history of appends, and across database engines."""

from __future__ import annotations

import tempfile

import sqlalchemy as sa
from audit_factories import add_pending, append_and_sequence, make_outcome, make_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopin.audit.checkpoint import SigningKey
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.audit.proof import verify_bundle
from geopin.audit.schema import checkpoints, nodes
from geopin.audit.sequencer import Sequencer
from geopin.audit.store import AuditStore
from geopin.audit.verify import format_report, verify_log

KEY = SigningKey.generate("audit.test/geopin")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    sequencer_batch=st.integers(min_value=1, max_value=50),
)
def test_any_appends_verify_and_every_record_proves(batches, sequencer_batch):
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_audit_engine(f"sqlite:///{tmp}/log.db")
        upgrade(engine)
        n = 0
        for size in batches:
            add_pending(engine, [make_record(i) for i in range(n, n + size)])
            sequencer = Sequencer(
                engine,
                signing_key=KEY,
                batch_size=sequencer_batch,
                checkpoint_file=f"{tmp}/checkpoints",
            )
            sequencer.run_once(force_checkpoint=True)
            n += size
        report = verify_log(engine, verifier=KEY.verifier(), checkpoint_file=f"{tmp}/checkpoints")
        assert report.ok, format_report(report)
        assert report.tree_size == n and report.warnings == []
        store = AuditStore(engine)
        for i in range(n):
            bundle = store.proof_bundle(f"dec-{i:06d}")
            assert bundle["seq"] == i and bundle["tree_size"] == n
            assert verify_bundle(bundle, KEY.verifier()).size == n
        engine.dispose()


def _tree(engine):
    with engine.connect() as conn:
        cps = conn.execute(
            sa.select(checkpoints.c.size, checkpoints.c.root).order_by(checkpoints.c.size)
        )
        stored = conn.execute(sa.select(nodes).order_by(nodes.c.level, nodes.c.idx))
        return [(s, bytes(r)) for s, r in cps], [(lv, ix, bytes(h)) for lv, ix, h in stored]


def test_the_same_records_give_the_same_tree_as_sqlite(engine, tmp_path):
    """Run against PostgreSQL, this holds the two engines to identical roots and nodes."""
    records = [make_record(n) if n % 4 else make_outcome(n) for n in range(37)]
    reference = create_audit_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    upgrade(reference)
    for target in (engine, reference):
        append_and_sequence(target, records[:20], key=KEY)
        append_and_sequence(target, records[20:], key=KEY)
    assert _tree(engine) == _tree(reference)
    assert [size for size, _ in _tree(engine)[0]] == [20, 37]
    reference.dispose()
