"""docs/operations.md stays true: its commands exist with the options shown (and the
self-contained ones run), its settings and variables are real, its telemetry table matches
the model."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
from click.testing import CliRunner

from geopin.cli import main as cli
from geopin.settings import env_names
from geopin.telemetry import TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()


def _shell_commands() -> list[list[str]]:
    """Every `geopin ...` command of the doc's sh blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, flags=re.DOTALL):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("geopin "):
                words = shlex.split(line)
                if ">" in words:
                    words = words[: words.index(">")]
                out.append(words[1:])
    return out


def _command(words: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_every_documented_command_and_option_exists():
    commands = _shell_commands()
    assert len(commands) >= 6
    for words in commands:
        command, rest = _command(words)
        assert not isinstance(command, click.Group), words
        options = {name for p in command.params for name in getattr(p, "opts", ())}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in options, (words, word)


def test_the_self_contained_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOPIN_AUDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    runner = CliRunner()
    for words in _shell_commands():
        if words[:2] in (["db", "upgrade"], ["db", "status"]):
            result = runner.invoke(cli, words)
            assert result.exit_code == 0, (words, result.output)
        if words[:2] == ["audit", "keygen"]:
            key = tmp_path / "checkpoint.key"
            shown = [str(key) if w.startswith("/etc/") else w for w in words]
            result = runner.invoke(cli, shown)
            assert result.exit_code == 0, (words, result.output)
            assert key.exists() and Path(str(key) + ".pub").exists()


def test_every_variable_named_is_a_setting():
    known = set(env_names().values())
    named = set(re.findall(r"\bGEOPIN_[A-Z_]+\b", DOC))
    assert named and named <= known, named - known


def test_the_telemetry_table_matches_the_model():
    section = DOC.split("## 5. Telemetry", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    fields = TelemetrySettings.model_fields
    assert {name for name, _ in rows} == set(fields)
    for name, default in rows:
        value = fields[name].get_default(call_default_factory=True)
        shown = default.strip().strip("`")
        if isinstance(value, bool):
            assert shown == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(shown) == value, name
        elif isinstance(value, str):
            assert shown == value, name
