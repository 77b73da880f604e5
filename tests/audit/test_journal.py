"""geopin.audit.journal: a process's records kept in one write each, counted, and recovered
exactly once the process has ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from audit_factories import make_record
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit.journal import Journal, journal_dir, recover, unmoved, waiting
from geopin.audit.records import encode
from geopin.errors import AuditError


def _bodies(count: int, start: int = 0) -> list[bytes]:
    return [encode(make_record(n)) for n in range(start, start + count)]


def _ids(bodies: list[bytes]) -> list[str]:
    return [json.loads(body)["id"] for body in bodies]


class _Sink:
    """What ``recover`` inserts, as a database would take it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bytes]] = []

    def __call__(self, rows: list[tuple[str, bytes]]) -> None:
        self.rows.extend(rows)


def test_the_directory_is_beside_the_database_and_not_sqlites_own_journal(tmp_path):
    assert journal_dir(str(tmp_path / "audit.db")) == tmp_path / "audit.db-journals"


def test_appended_records_wait_until_committed_and_segments_go_once_all_are_in(tmp_path):
    journal = Journal(tmp_path, segment_bytes=3000)  # a few records per segment
    journal.open()
    bodies = _bodies(10)
    numbers = [journal.append(body) for body in bodies]
    assert numbers == list(range(1, 11))
    segments = sorted(tmp_path.glob("*.jnl"))
    assert len(segments) > 2
    assert unmoved(tmp_path) == bodies and waiting(tmp_path) == 10

    journal.committed(4)
    assert unmoved(tmp_path) == bodies[4:]
    firsts = sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("*.jnl"))
    assert firsts[0] <= 5  # a segment holding record 5 is kept; the ones before it are gone
    assert len(list(tmp_path.glob("*.jnl"))) < len(segments)

    journal.committed(10)
    assert waiting(tmp_path) == 0
    journal.close(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_a_living_journal_is_never_recovered(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append(_bodies(1)[0])
    sink = _Sink()
    assert recover(tmp_path, sink) == 0  # its lock is held (by another open file of ours)
    assert sink.rows == [] and waiting(tmp_path) == 1
    journal.close(keep=False)


def test_an_ended_journal_is_recovered_from_its_count_on_and_removed(tmp_path):
    journal = Journal(tmp_path, segment_bytes=2500)
    journal.open()
    bodies = _bodies(9)
    for body in bodies:
        journal.append(body)
    journal.committed(3)
    journal.close(keep=True)  # as a process that ended with records not in the database

    sink = _Sink()
    assert waiting(tmp_path) == 6
    assert recover(tmp_path, sink) == 6
    assert [body for _, body in sink.rows] == bodies[3:]
    assert [rid for rid, _ in sink.rows] == _ids(bodies[3:])
    assert list(tmp_path.iterdir()) == [] and waiting(tmp_path) == 0
    assert recover(tmp_path, sink) == 0 and len(sink.rows) == 6  # nothing twice


def test_recovery_that_cannot_insert_keeps_every_file(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append(_bodies(1)[0])
    journal.close(keep=True)
    before = sorted(p.name for p in tmp_path.iterdir())

    def down(rows):
        raise AuditError("the database is away")

    with pytest.raises(AuditError):
        recover(tmp_path, down)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and waiting(tmp_path) == 1


def test_unreadable_lines_are_set_aside_and_reported(tmp_path, caplog):
    journal = Journal(tmp_path)
    journal.open()
    good = _bodies(2)
    journal.append(good[0])
    journal.append(b'{"not": "a record"}')
    journal.append(good[1])
    journal.close(keep=True)
    sink = _Sink()
    recover(tmp_path, sink)
    assert [body for _, body in sink.rows] == good
    rejected = list(tmp_path.glob("*.rejected"))
    assert [p.read_bytes() for p in rejected] == [b'{"not": "a record"}\n']
    assert "unreadable" in caplog.text


_FILL_THE_FILE = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from audit_factories import make_record
    from geopin.audit.journal import Journal
    from geopin.audit.records import encode
    from geopin.errors import AuditError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))  # bytes per file
    journal = Journal(Path(sys.argv[1]), segment_bytes=1 << 20)
    journal.open()
    for n in range(12):
        body = encode(make_record(n))
        try:
            journal.append(body)
        except AuditError as exc:
            print("failed", str(exc), flush=True)
            continue
        print("kept", json.loads(body)["id"], flush=True)
    """
)


def test_a_failed_write_acknowledges_nothing_and_the_next_record_starts_a_new_segment(tmp_path):
    """The file size limit makes a write stop part way, as a full disk does: that record is
    refused, and the records after it still go to the journal (a new segment) and are
    recovered; the torn line is reported, never joined to the next record."""
    here = os.path.dirname(__file__)
    done = subprocess.run(
        [sys.executable, "-c", _FILL_THE_FILE, str(tmp_path), here],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line.split(" ", 1) for line in done.stdout.splitlines()]
    kept = [rest for word, rest in lines if word == "kept"]
    failures = [rest for word, rest in lines if word == "failed"]
    assert failures and all("audit journal" in f and ".jnl" in f for f in failures)
    assert len(kept) + len(failures) == 12 and len(kept) >= 6
    assert len(list(tmp_path.glob("*.jnl"))) > 1  # a new segment after each failure

    sink = _Sink()
    assert recover(tmp_path, sink) == len(kept)
    assert [rid for rid, _ in sink.rows] == kept
    (rejected,) = tmp_path.glob("*.rejected")  # each torn line, kept aside
    assert rejected.read_bytes().count(b"\n") == len(failures)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4)),  # records appended, then committed
        min_size=1,
        max_size=12,
    ),
    segment_bytes=st.sampled_from([600, 2500, 1 << 20]),
)
def test_what_was_never_committed_is_recovered_exactly_once(tmp_path_factory, steps, segment_bytes):
    """Whatever the appends, commits and segment size when the process ends, the database
    ends with each record exactly once: the committed ones from before, the rest recovered."""
    directory = tmp_path_factory.mktemp("journals")
    journal = Journal(directory, segment_bytes=segment_bytes)
    journal.open()
    written: list[bytes] = []
    database: list[bytes] = []
    for appended, committing in steps:
        for body in _bodies(appended, start=len(written)):
            journal.append(body)
            written.append(body)
        through = min(len(written), len(database) + committing)
        database.extend(written[len(database) : through])  # the writer commits in order
        journal.committed(through)
        assert waiting(directory) == len(written) - len(database)
    journal.close(keep=True)
    sink = _Sink()
    recover(directory, sink)
    assert database + [body for _, body in sink.rows] == written
    assert list(Path(directory).iterdir()) == []
