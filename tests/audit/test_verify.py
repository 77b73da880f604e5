"""Each kind of tampering is detected and named, with the first bad sequence number."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from audit_factories import append_and_sequence, make_outcome, make_record

from geopin.audit.canonical import canonical_json
from geopin.audit.checkpoint import Checkpoint, SigningKey
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.audit.schema import checkpoints, nodes, record_rules, records
from geopin.audit.verify import format_report, verify_log

N = 12


@pytest.fixture
def key():
    return SigningKey.generate("audit.test/geopin")


@pytest.fixture
def log(engine, key, tmp_path):
    """A log of N records (decisions and outcomes), checkpointed at 8 and at N."""
    cp_file = tmp_path / "checkpoints"
    batch = [make_record(n) if n % 3 else make_outcome(n) for n in range(N)]
    append_and_sequence(engine, batch[:8], key=key, checkpoint_file=cp_file)
    append_and_sequence(engine, batch[8:], key=key, checkpoint_file=cp_file)
    return engine, str(cp_file)


def _verify(log, key):
    engine, cp_file = log
    return verify_log(engine, verifier=key.verifier(), checkpoint_file=cp_file)


def _codes(report):
    return {p.code for p in report.problems}


def _edit(engine, statement):
    with engine.begin() as conn:
        conn.execute(statement)


def test_an_untouched_log_verifies(log, key):
    report = _verify(log, key)
    assert report.ok, format_report(report)
    assert report.records == N and report.tree_size == N
    assert report.db_checkpoints == 2 and report.file_checkpoints == 2
    assert report.warnings == []
    assert "OK" in format_report(report)


def test_modified_body(log, key):
    engine, _ = log
    with engine.connect() as conn:
        body = json.loads(conn.scalar(sa.select(records.c.body).where(records.c.seq == 4)))
    body["processing_country"] = "US"  # still canonical, still a plausible record
    body["endpoint"] = "us-east"
    _edit(
        engine,
        records.update()
        .where(records.c.seq == 4)
        .values(body=canonical_json(body), processing_country="US", endpoint="us-east"),
    )
    report = _verify(log, key)
    assert not report.ok and report.first_bad_seq == 4
    assert "modified" in _codes(report)
    assert "seq 4: the record body does not match its leaf hash" in format_report(report)


def test_non_canonical_body(log, key):
    engine, _ = log
    with engine.connect() as conn:
        body = conn.scalar(sa.select(records.c.body).where(records.c.seq == 2))
    _edit(engine, records.update().where(records.c.seq == 2).values(body=b" " + bytes(body)))
    report = _verify(log, key)
    assert report.first_bad_seq == 2 and "not in canonical form" in format_report(report)


def test_modified_flat_column_alone(log, key):
    engine, _ = log
    _edit(engine, records.update().where(records.c.seq == 5).values(country="DE"))
    report = _verify(log, key)
    assert _codes(report) == {"column_mismatch"} and report.first_bad_seq == 5
    assert "column country='DE' but the body says 'FR'" in format_report(report)


def test_modified_rule_row(log, key):
    engine, _ = log
    _edit(engine, record_rules.update().where(record_rules.c.seq == 7).values(rule_id="other"))
    report = _verify(log, key)
    assert _codes(report) == {"column_mismatch"} and report.first_bad_seq == 7


def test_deleted_row(log, key):
    engine, _ = log
    _edit(engine, records.delete().where(records.c.seq == 3))
    report = _verify(log, key)
    assert _codes(report) == {"deleted"} and report.first_bad_seq == 3


def test_deleted_row_and_leaf(log, key):
    engine, _ = log
    _edit(engine, records.delete().where(records.c.seq == 3))
    _edit(engine, nodes.delete().where(nodes.c.level == 0, nodes.c.idx == 3))
    report = _verify(log, key)
    assert "deleted" in _codes(report) and report.first_bad_seq == 3
    assert "checkpoint_mismatch" in _codes(report)  # the roots no longer match either


def test_inserted_row_at_the_end(log, key):
    engine, _ = log
    fake = make_record(99)
    from geopin.audit.records import flat_columns

    _edit(
        engine,
        records.insert().values(
            seq=N, record_id=fake["id"], body=canonical_json(fake), **flat_columns(fake)
        ),
    )
    report = _verify(log, key)
    assert "inserted" in _codes(report) and report.first_bad_seq == N


def test_inserted_row_in_the_middle(log, key):
    engine, _ = log
    # Make room at seq 6 by shifting the later rows up (in two steps to dodge the primary key).
    _edit(engine, records.update().where(records.c.seq >= 6).values(seq=records.c.seq + 1000))
    _edit(engine, records.update().where(records.c.seq >= 1000).values(seq=records.c.seq - 999))
    fake = make_record(99)
    from geopin.audit.records import flat_columns

    _edit(
        engine,
        records.insert().values(
            seq=6, record_id=fake["id"], body=canonical_json(fake), **flat_columns(fake)
        ),
    )
    report = _verify(log, key)
    assert report.first_bad_seq == 6
    assert {"modified", "reordered", "inserted"} <= _codes(report)
    assert "seq 7: holds the record that was sequenced at seq 6" in format_report(report)


def test_reordered_rows(log, key):
    engine, _ = log
    _edit(engine, records.update().where(records.c.seq == 2).values(seq=-1))
    _edit(engine, records.update().where(records.c.seq == 3).values(seq=2))
    _edit(engine, records.update().where(records.c.seq == -1).values(seq=3))
    report = _verify(log, key)
    assert "reordered" in _codes(report) and report.first_bad_seq == 2
    text = format_report(report)
    assert "seq 2: holds the record that was sequenced at seq 3" in text
    assert "seq 3: holds the record that was sequenced at seq 2" in text


def test_truncated_tail(log, key):
    engine, _ = log
    _edit(engine, records.delete().where(records.c.seq >= 9))
    _edit(engine, nodes.delete().where(nodes.c.level == 0, nodes.c.idx >= 9))
    report = _verify(log, key)
    assert "truncated" in _codes(report) and report.first_bad_seq == 9
    assert "records from seq 9 were removed (log truncated)" in format_report(report)


def test_truncated_tail_and_its_checkpoint(log, key):
    """Removing the last checkpoint from the database too is caught by the external file."""
    engine, _ = log
    _edit(engine, records.delete().where(records.c.seq >= 9))
    _edit(engine, nodes.delete().where(nodes.c.level == 0, nodes.c.idx >= 9))
    _edit(engine, checkpoints.delete().where(checkpoints.c.size == N))
    report = _verify(log, key)
    assert "truncated" in _codes(report) and report.first_bad_seq == 9


def test_rewritten_checkpoint_root(log, key):
    engine, _ = log
    _edit(engine, checkpoints.update().where(checkpoints.c.size == 8).values(root=b"\x00" * 32))
    report = _verify(log, key)
    assert "checkpoint_mismatch" in _codes(report)
    assert "differ from its signed note" in format_report(report)


def test_checkpoint_signed_by_another_key(log, key):
    engine, _ = log
    with engine.connect() as conn:
        row = conn.execute(sa.select(checkpoints).where(checkpoints.c.size == 8)).one()
    from geopin.audit.checkpoint import Checkpoint

    forger = SigningKey.generate("audit.test/geopin")
    forged = forger.sign(Checkpoint("audit.test/geopin", 8, bytes(row.root)))
    _edit(engine, checkpoints.update().where(checkpoints.c.size == 8).values(note=forged))
    report = _verify(log, key)
    assert _codes(report) == {"checkpoint_signature"} and report.first_bad_seq == 8


def test_checkpoint_file_that_disagrees(engine, key, tmp_path):
    """A log rewritten wholesale, even with re-signed checkpoints, contradicts the file."""
    cp_file = tmp_path / "checkpoints"
    append_and_sequence(
        engine, [make_record(n) for n in range(6)], key=key, checkpoint_file=cp_file
    )
    other = create_audit_engine(f"sqlite:///{tmp_path / 'rewritten.db'}")
    upgrade(other)
    rewritten = [make_record(n) for n in range(6)]
    rewritten[2] = make_record(2, country="US")
    append_and_sequence(other, rewritten, key=key)
    assert verify_log(other, verifier=key.verifier()).ok  # consistent on its own
    report = verify_log(other, verifier=key.verifier(), checkpoint_file=str(cp_file))
    assert _codes(report) == {"checkpoint_mismatch"}
    assert f"checkpoint file {cp_file} note 1 (size 6) has root" in format_report(report)
    other.dispose()


def test_tampered_interior_node(log, key):
    engine, _ = log
    _edit(
        engine, nodes.update().where(nodes.c.level == 2, nodes.c.idx == 1).values(hash=b"\x09" * 32)
    )
    report = _verify(log, key)
    assert _codes(report) == {"node_mismatch"} and report.first_bad_seq == 4


def test_without_a_public_key_signatures_are_reported_unchecked(log):
    engine, cp_file = log
    report = verify_log(engine, checkpoint_file=cp_file)
    assert report.ok and not report.signatures_checked
    assert any("signatures were not checked" in w for w in report.warnings)


def test_unsigned_tail_is_a_warning(engine, key):
    append_and_sequence(engine, [make_record(n) for n in range(3)], key=key)
    append_and_sequence(engine, [make_record(n) for n in range(3, 5)])
    report = verify_log(engine, verifier=key.verifier())
    assert report.ok
    assert report.warnings == ["seq 3..4 not yet covered by a signed checkpoint"]


def test_report_as_json(log, key):
    engine, cp_file = log
    _edit(engine, records.update().where(records.c.seq == 1).values(tenant="x"))
    data = json.loads(json.dumps(_verify(log, key).to_json()))
    assert data["ok"] is False and data["first_bad_seq"] == 1
    assert data["problems"][0]["code"] == "column_mismatch"


def test_verify_streams_in_chunks(engine, key, monkeypatch):
    import geopin.audit.verify as verify_module

    monkeypatch.setattr(verify_module, "_CHUNK", 3)
    append_and_sequence(engine, [make_record(n) for n in range(10)], key=key)
    assert verify_log(engine, verifier=key.verifier()).ok
    _edit(engine, records.update().where(records.c.seq == 7).values(model="other"))
    assert verify_log(engine, verifier=key.verifier()).first_bad_seq == 7


def _lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def test_torn_checkpoint_file_tail_is_a_finding_and_the_entries_before_it_are_checked(log, key):
    engine, cp_file = log
    whole = _lines(cp_file)
    with open(cp_file, "a", encoding="utf-8") as f:
        f.write("audit.test/geopin\n99\n")  # a crash during the next append
    report = _verify(log, key)
    assert _codes(report) == {"checkpoint_file_torn"}
    assert report.file_checkpoints == 2  # both complete notes were still opened and compared
    (problem,) = report.problems
    assert problem.message.startswith(f"{cp_file}:{len(whole) + 1}: ")
    assert "2 complete entries before it were checked" in problem.message


def test_torn_tail_keeps_checking_the_complete_notes_against_the_log(log, key):
    """A complete note that disagrees with the log is still found before a torn tail."""
    engine, cp_file = log
    whole = _lines(cp_file)
    forged = key.sign(Checkpoint("audit.test/geopin", 8, b"\x05" * 32))
    with open(cp_file, "w", encoding="utf-8") as f:
        f.write(forged + "\n" + "".join(whole) + "audit.test/geo")
    report = _verify(log, key)
    assert _codes(report) == {"checkpoint_file_torn", "checkpoint_mismatch"}


def test_damaged_checkpoint_file_is_a_finding_with_its_line(log, key):
    engine, cp_file = log
    whole = _lines(cp_file)
    second = whole.index("\n", whole.index("\n") + 1) + 1  # where the second entry starts
    whole[second] = "\n"  # a blank line where a note should start
    with open(cp_file, "w", encoding="utf-8") as f:
        f.writelines(whole)
    report = _verify(log, key)
    assert _codes(report) == {"checkpoint_file_damaged"}
    (problem,) = report.problems
    assert problem.message.startswith(f"{cp_file}:{second + 1}: blank line where a note")
    assert "the 1 entries before it were checked" in problem.message
    assert report.file_checkpoints == 1


def test_checkpoint_file_that_is_not_utf8_or_unreadable(log, key, tmp_path):
    engine, cp_file = log
    with open(cp_file, "ab") as f:
        f.write(b"\xff\xfe\n")
    report = _verify(log, key)
    assert _codes(report) == {"checkpoint_file_damaged"}
    assert "not valid UTF-8" in report.problems[0].message
    directory = tmp_path / "a-directory"
    directory.mkdir()
    report = verify_log(engine, verifier=key.verifier(), checkpoint_file=str(directory))
    assert _codes(report) == {"checkpoint_file"}
    assert str(directory) in report.problems[0].message
