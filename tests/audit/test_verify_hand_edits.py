"""Edits made by hand with a database's own tools, which may change a column's storage type."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from audit_factories import append_and_sequence, make_record

from geopin.audit.checkpoint import SigningKey
from geopin.audit.verify import format_report, verify_log


def test_a_body_rewritten_as_text_by_sqlite_is_reported_not_a_crash(engine, tmp_path):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's replace() turns a BLOB into TEXT; PostgreSQL keeps bytea")
    key = SigningKey.generate("audit.test/geopin")
    cp_file = tmp_path / "checkpoints"
    append_and_sequence(
        engine, [make_record(n) for n in range(6)], key=key, checkpoint_file=cp_file
    )
    with engine.begin() as conn:
        country = conn.scalar(sa.text("SELECT country FROM audit_records WHERE seq = 3"))
        conn.execute(
            sa.text(
                "UPDATE audit_records SET body = replace(CAST(body AS TEXT), :old, :new) "
                "WHERE seq = 3"
            ),
            {"old": f'"{country}"', "new": '"US"'},
        )
        assert (
            conn.scalar(sa.text("SELECT typeof(body) FROM audit_records WHERE seq = 3")) == "text"
        )
    report = verify_log(engine, verifier=key.verifier(), checkpoint_file=str(cp_file))
    assert not report.ok and report.first_bad_seq == 3
    assert "seq 3: the record body does not match its leaf hash" in format_report(report)
