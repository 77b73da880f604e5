"""``geopin audit`` and ``geopin db`` through CliRunner, against real databases."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_factories import add_pending, geopin_service, make_endpoint, make_record
from click.testing import CliRunner

from geopin.audit.db import create_audit_engine
from geopin.audit.schema import records
from geopin.cli.audit import audit
from geopin.cli.db import db

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def run(group, *args, ok=True, input=None):
    result = CliRunner().invoke(group, [str(a) for a in args], input=input)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def setup(database_url, tmp_path):
    """A migrated database with a signing key, and 8 records sequenced and checkpointed."""
    run(db, "upgrade", "--db", database_url)
    key = tmp_path / "audit.key"
    run(audit, "keygen", "--name", "audit.test/geopin", "--out", key)
    engine = create_audit_engine(database_url)
    us = make_endpoint(id="us-east", country="US")
    add_pending(
        engine,
        [
            make_record(
                n, country="DE" if n % 2 else "US", endpoint=us if n % 4 == 0 else make_endpoint()
            )
            for n in range(8)
        ],
    )
    cps = tmp_path / "checkpoints"
    result = run(audit, "sequence", "--db", database_url, "--key", key, "--checkpoints", cps)
    assert "sequenced 8 records; tree size 8" in result.output
    assert "signed checkpoint: size 8" in result.output
    yield database_url, key, Path(f"{key}.pub"), cps, engine
    engine.dispose()


def test_db_upgrade_and_status(database_url):
    result = run(db, "status", "--db", database_url, ok=False)
    assert result.exit_code == 1 and "run `geopin db upgrade`" in result.output
    assert "upgraded empty -> " in run(db, "upgrade", "--db", database_url).output
    assert "already at" in run(db, "upgrade", "--db", database_url).output
    assert "up to date" in run(db, "status", "--db", database_url).output


def test_keygen_writes_a_private_key_0600_and_the_public_key(tmp_path):
    out = tmp_path / "k"
    result = run(audit, "keygen", "--name", "audit.test/geopin", "--out", out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    public = (tmp_path / "k.pub").read_text().strip()
    assert result.output.splitlines()[0] == public and public.startswith("audit.test/geopin+")
    again = run(audit, "keygen", "--name", "x", "--out", out, ok=False)
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_verify_passes_then_names_the_tampering(setup):
    url, _, pub, cps, engine = setup
    result = run(audit, "verify", "--db", url, "--public-key", pub, "--checkpoints", cps)
    assert "OK: every record, node and checkpoint verifies" in result.output
    with engine.begin() as conn:
        conn.execute(records.update().where(records.c.seq == 3).values(country="FR"))
    bad = run(audit, "verify", "--db", url, "--public-key", pub, "--checkpoints", cps, ok=False)
    assert bad.exit_code == 1
    assert "FAIL [column_mismatch] seq 3: column country='FR'" in bad.output
    data = json.loads(
        run(audit, "verify", "--db", url, "--public-key", pub, "--format", "json", ok=False).stdout
    )
    assert data["ok"] is False and data["first_bad_seq"] == 3


def test_proof_then_offline_check(setup, tmp_path):
    url, _, pub, _, _ = setup
    bundle = tmp_path / "proof.json"
    bundle.write_text(run(audit, "proof", "dec-000005", "--db", url).stdout)
    result = run(audit, "verify-proof", bundle, "--public-key", pub)
    assert "OK: record" in result.output and "entry 5 of audit.test/geopin" in result.output
    data = json.loads(bundle.read_text())
    data["record"]["country"] = "FR"
    bundle.write_text(json.dumps(data))
    bad = run(audit, "verify-proof", bundle, "--public-key", pub, ok=False)
    assert bad.exit_code == 1 and "Error" in bad.output
    missing = run(audit, "proof", "nope", "--db", url, ok=False)
    assert "no sequenced decision record" in missing.output


def test_query_formats_and_paging(setup):
    url, *_ = setup
    table = run(audit, "query", "--db", url, "--country", "DE").stdout.splitlines()
    assert table[0].split()[:3] == ["seq", "ts", "kind"] and len(table) == 5
    lines = run(audit, "query", "--db", url, "--format", "jsonl", "--limit", "3").stdout
    first = [json.loads(line) for line in lines.splitlines()]
    assert [r["seq"] for r in first] == [0, 1, 2]
    page = run(audit, "query", "--db", url, "--format", "jsonl", "--limit", "3")
    assert "next page: --cursor s2" in page.stderr
    rest = run(audit, "query", "--db", url, "--format", "jsonl", "--cursor", "s2").stdout
    assert [json.loads(line)["seq"] for line in rest.splitlines()] == [3, 4, 5, 6, 7]
    rows = list(
        csv.DictReader(
            io.StringIO(
                run(
                    audit, "query", "--db", url, "--format", "csv", "--processing-country", "US"
                ).output
            )
        )
    )
    assert [r["seq"] for r in rows] == ["0", "4"] and rows[0]["rules"] == "eu-residency"
    assert list(rows[0])[-2:] == ["rules", "object"] and rows[0]["object"] == ""


def test_query_reports_and_can_include_pending(setup):
    url, _, _, _, engine = setup
    add_pending(engine, [make_record(50)])
    result = run(audit, "query", "--db", url, "--decision-id", "dec-000050")
    assert "1 records are pending" in result.stderr and "dec-000050" not in result.stdout
    result = run(audit, "query", "--db", url, "--decision-id", "dec-000050", "--sequence")
    assert "dec-000050" in result.stdout and "pending" not in result.stderr


def test_stats_by_processing_country_for_a_jurisdiction(setup):
    url, *_ = setup
    args = [
        "stats",
        "--db",
        url,
        "--since",
        "2026-11-01",
        "--jurisdiction",
        "EEA",
        "--by",
        "processing_country",
        "--policy",
        POLICIES,
        "--format",
        "json",
    ]
    data = json.loads(run(audit, *args).stdout)
    assert data["groups"] == [{"processing_country": "DE", "count": 4}] and data["total"] == 4
    table = run(audit, "stats", "--db", url, "--by", "country,processing_country").output
    assert "total 8" in table
    unknown = run(
        audit,
        "stats",
        "--db",
        url,
        "--by",
        "country",
        "--jurisdiction",
        "ATLANTIS",
        "--policy",
        POLICIES,
        ok=False,
    )
    assert unknown.exit_code == 2 and "'ATLANTIS' is not a jurisdiction" in unknown.output
    no_policy = run(
        audit, "stats", "--db", url, "--by", "country", "--jurisdiction", "EEA", ok=False
    )
    assert "--jurisdiction needs --policy" in no_policy.output


def test_bad_arguments_are_reported(setup):
    url, *_ = setup
    result = run(audit, "query", "--db", url, "--since", "soon", ok=False)
    assert result.exit_code == 1 and "--since 'soon' is not an ISO date" in result.output
    result = run(audit, "stats", "--db", url, "--by", "colour", ok=False)
    assert "cannot group by 'colour'" in result.output


def test_prune_from_the_command_line(setup):
    url, key, pub, cps, engine = setup
    result = run(
        audit,
        "prune",
        "--before",
        "2030-01-01",
        "--db",
        url,
        "--key",
        key,
        "--checkpoints",
        cps,
        "--yes",
    )
    assert "pruned 8 records" in result.output and "tree size 9" in result.output
    verified = run(audit, "verify", "--db", url, "--public-key", pub, "--checkpoints", cps)
    assert "pruned (bodies removed by a recorded prune): seq 0..7" in verified.output
    with engine.connect() as conn:
        assert conn.scalar(sa.select(records.c.kind).where(records.c.seq == 8)) == "prune"


def test_an_unreachable_database_is_a_clean_error():
    result = run(audit, "verify", "--db", "postgresql+psycopg://postgres@127.0.0.1:9/x", ok=False)
    assert result.exit_code == 1 and "Error: verifying the audit log" in result.output


def test_sequence_follow_runs_as_a_service_until_sigterm(database_url, tmp_path):
    """`geopin audit sequence --follow`: records written meanwhile are sequenced as they
    come, SIGTERM ends it with a last pass and a checkpoint, and the log verifies."""
    import signal
    import time

    run(db, "upgrade", "--db", database_url)
    key = tmp_path / "audit.key"
    run(audit, "keygen", "--name", "audit.test/geopin", "--out", key)
    checkpoints = tmp_path / "checkpoints"
    engine = create_audit_engine(database_url)
    args = ["audit", "sequence", "--follow", "--interval", "0.05", "--db", database_url,
            "--key", str(key), "--checkpoints", str(checkpoints)]  # fmt: skip

    def sequenced() -> int:
        with engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(records)) or 0

    with geopin_service(*args) as service:
        for wave in range(3):
            add_pending(engine, [make_record(wave * 10 + n) for n in range(10)])
            deadline = time.monotonic() + 30
            while sequenced() < (wave + 1) * 10:
                assert service.poll() is None, service.stderr.read().decode()
                assert time.monotonic() < deadline, "records were not sequenced"
                time.sleep(0.05)
        add_pending(engine, [make_record(100 + n) for n in range(5)])  # the last pass's
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0, service.stderr.read().decode()
    assert sequenced() == 35
    engine.dispose()
    result = run(
        audit, "verify", "--db", database_url, "--public-key", f"{key}.pub",
        "--checkpoints", checkpoints,
    )  # fmt: skip
    assert "latest signed size 35" in result.output  # the last pass signed everything
    assert "OK: every record, node and checkpoint verifies" in result.output
