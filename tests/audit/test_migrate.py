from __future__ import annotations

import pytest
import sqlalchemy as sa

from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import check_schema, head_revision, status, upgrade
from geopin.errors import ConfigError, SchemaOutOfDate


def test_upgrade_creates_the_schema_and_check_passes(database_url):
    engine = create_audit_engine(database_url)
    assert status(engine).current is None
    upgrade(engine)
    assert status(engine).current == head_revision()
    check_schema(engine)  # does not raise
    tables = set(sa.inspect(engine).get_table_names())
    assert {"audit_pending", "audit_records", "audit_nodes", "audit_checkpoints"} <= tables
    upgrade(engine)  # running it again is harmless
    engine.dispose()


def test_a_fresh_database_is_refused_with_the_fixing_command(database_url):
    engine = create_audit_engine(database_url)
    with pytest.raises(SchemaOutOfDate, match="geopin db upgrade --db"):
        check_schema(engine)
    engine.dispose()


def test_an_older_schema_is_refused(database_url):
    engine = create_audit_engine(database_url)
    upgrade(engine)
    with engine.begin() as conn:  # pretend an older revision; the message names both
        conn.execute(sa.text("UPDATE geopin_audit_version SET version_num = 'base0'"))
    with pytest.raises(SchemaOutOfDate, match="newer than this geopin"):
        check_schema(engine)
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous="FULL")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


@pytest.mark.parametrize("url", ["mysql://x@y/z", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        create_audit_engine(url)


def test_a_log_from_before_objects_upgrades_verifies_and_is_queried_by_object(database_url):
    from audit_factories import add_pending, append_and_sequence, make_outcome, make_record

    from geopin.audit.query import Filters, query_records
    from geopin.audit.verify import verify_log

    engine = create_audit_engine(database_url)
    upgrade(engine, "0002")
    # What an older geopin left pending: its outcome records have no "object".
    before = [make_record(1), {k: v for k, v in make_outcome(1).items() if k != "object"}]
    add_pending(engine, before)
    upgrade(engine)
    check_schema(engine)
    append_and_sequence(engine, [make_record(2), make_outcome(2, object_id="file-abc")])
    report = verify_log(engine)
    assert report.ok and report.records == 4, report
    found = query_records(engine, Filters.build(object="file-abc")).rows
    assert [(r["kind"], r["decision_id"]) for r in found] == [("outcome", "dec-000002")]
    engine.dispose()
