"""Every command shown in docs/audit.md runs as shown, in order, against a real log."""

from __future__ import annotations

import re
import shlex
import signal
import time
from pathlib import Path

from audit_factories import add_pending, geopin_service, make_outcome, make_record
from click.testing import CliRunner

from geopin.audit.db import create_audit_engine
from geopin.cli.audit import audit
from geopin.cli.db import db

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "audit.md"
EXAMPLE_DECISION = "0193a8c2-4c1e-7b3a-9d2e-5f6a7b8c9d0e"


def _commands() -> list[str]:
    return re.findall(r"^\$ (geopin .+)$", DOC.read_text(), flags=re.MULTILINE)


def test_the_documented_commands_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOPIN_AUDIT_DATABASE_URL", raising=False)
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    commands = _commands()
    assert len(commands) >= 15
    seeded = False
    for line in commands:
        words = shlex.split(line)
        out_file = None
        if ">" in words:
            at = words.index(">")
            words, out_file = words[:at], words[at + 1]
        if "--follow" in words:
            _run_service(words, tmp_path)
            continue
        group = {"audit": audit, "db": db}[words[1]]
        if words[1:3] == ["audit", "sequence"] and not seeded:
            engine = create_audit_engine("sqlite:///geopin-audit.db")
            records = [make_record(n, country=["DE", "FR", "US"][n % 3]) for n in range(20)]
            records.append(make_record(99, country="DE", decision_id=EXAMPLE_DECISION))
            add_pending(engine, records + [make_outcome(1)])
            engine.dispose()
            seeded = True
        result = CliRunner().invoke(group, words[2:])
        assert result.exit_code == 0, f"{line}\n{result.output}{result.exception!r}"
        if out_file:
            Path(out_file).write_text(result.stdout)
        if words[1:3] == ["audit", "verify"]:
            assert "FAIL" not in result.stdout
    assert seeded


def _run_service(words: list[str], cwd: Path) -> None:
    """A command that runs until stopped: start it, see it work, stop it with SIGTERM."""
    with geopin_service(*words[1:], cwd=cwd) as service:
        assert service.stderr is not None
        started = service.stderr.readline().decode()
        assert "until SIGTERM" in started, started
        time.sleep(0.3)
        assert service.poll() is None
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0, service.stderr.read().decode()
