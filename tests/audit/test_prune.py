from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from audit_factories import T0, append_and_sequence, make_record

from geopin.audit.checkpoint import SigningKey
from geopin.audit.prune import prune
from geopin.audit.schema import record_rules, records
from geopin.audit.sequencer import Sequencer
from geopin.audit.verify import format_report, verify_log
from geopin.errors import AuditError


@pytest.fixture
def key():
    return SigningKey.generate("audit.test/geopin")


def _day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def test_prune_keeps_verification_green_and_is_recorded(engine, key, tmp_path):
    cp_file = tmp_path / "checkpoints"
    batch = [make_record(n, time=_day(n)) for n in range(6)]  # one record a day
    append_and_sequence(engine, batch, key=key, checkpoint_file=cp_file)
    result = prune(engine, "2026-11-04")  # days 0, 1, 2
    assert result.pruned == 3 and result.seq_end == 6 and result.before.startswith("2026-11-04")
    Sequencer(engine, signing_key=key, checkpoint_file=cp_file).run_once(force_checkpoint=True)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(records).order_by(records.c.seq)).all()
        rules = conn.scalars(sa.select(record_rules.c.seq)).all()
    assert [r.body is None for r in rows] == [True, True, True, False, False, False, False]
    assert rows[0].country is None and rows[0].ts == batch[0]["time"]  # time and kind remain
    assert rows[6].kind == "prune" and sorted(rules) == [3, 4, 5]
    report = verify_log(engine, verifier=key.verifier(), checkpoint_file=str(cp_file))
    assert report.ok, format_report(report)
    assert report.pruned == [(0, 2)]
    assert "pruned (bodies removed by a recorded prune): seq 0..2" in format_report(report)


def test_prune_only_touches_checkpointed_records(engine, key):
    append_and_sequence(engine, [make_record(n, time=_day(n)) for n in range(3)], key=key)
    append_and_sequence(engine, [make_record(n, time=_day(n)) for n in range(3, 5)])  # unsigned
    assert prune(engine, "2030-01-01").pruned == 3


def test_prune_needs_a_checkpoint(engine):
    append_and_sequence(engine, [make_record(1)])
    with pytest.raises(AuditError, match="no signed checkpoint yet"):
        prune(engine, "2030-01-01")


def test_a_body_removed_without_a_prune_record_fails(engine, key):
    append_and_sequence(engine, [make_record(n) for n in range(4)], key=key)
    with engine.begin() as conn:
        conn.execute(records.update().where(records.c.seq == 1).values(body=None))
    report = verify_log(engine, verifier=key.verifier())
    assert not report.ok and report.first_bad_seq == 1
    assert {p.code for p in report.problems} == {"pruned_unrecorded"}


def test_prune_before_bad_date(engine):
    with pytest.raises(AuditError, match="not an ISO date"):
        prune(engine, "last tuesday", clock=lambda: datetime.now(UTC))
