from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from geopin.cli.keys import keys
from geopin.keys import KeyStore


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(keys, list(args), env=env, catch_exceptions=False)


def test_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    result = _run("create", "--tenant", "acme-de", "--name", "ci", "--keys-file", str(path))
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("gpk_") and "\n" not in key
    assert "geopin stores only its hash" in result.stderr
    assert key not in path.read_text()
    assert key.split("_", 2)[2] not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = KeyStore.load(path).authenticate(key)
    assert entry is not None and entry.tenant == "acme-de" and entry.name == "ci"


def test_create_list_revoke_round_trip_with_the_env_variable(tmp_path: Path) -> None:
    env = {"GEOPIN_KEYS_FILE": str(tmp_path / "k.json")}
    first = _run("create", "--tenant", "acme", "--json", env=env)
    second = _run("create", "--tenant", "globex", env=env)
    created = json.loads(first.stdout)
    assert set(created) == {"key_id", "tenant", "name", "created_at", "revoked_at", "key"}

    listed = _run("list", env=env)
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["KEY", "ID", "TENANT", "NAME", "CREATED", "REVOKED"]
    assert len(lines) == 3
    assert any(line.startswith(created["key_id"]) and " acme " in line for line in lines)
    for secret in (created["key"], second.stdout.strip()):
        assert secret not in listed.output
    store = KeyStore.load(tmp_path / "k.json")
    for entry in store.entries():
        assert entry.sha256 not in listed.output

    revoked = _run("revoke", created["key_id"], env=env)
    assert revoked.exit_code == 0
    assert revoked.stdout.startswith(f"Revoked key {created['key_id']} (tenant acme)")
    again = _run("revoke", created["key_id"], env=env)
    assert "already revoked" in again.stdout

    rows = json.loads(_run("list", "--json", env=env).stdout)
    by_id = {row["key_id"]: row for row in rows}
    assert by_id[created["key_id"]]["revoked_at"] is not None
    assert sum(row["revoked_at"] is None for row in rows) == 1
    assert all(set(row) == {"key_id", "tenant", "name", "created_at", "revoked_at"} for row in rows)
    assert KeyStore.load(tmp_path / "k.json").authenticate(created["key"]) is None
    assert KeyStore.load(tmp_path / "k.json").authenticate(second.stdout.strip()) is not None


def test_default_keys_file_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOPIN_KEYS_FILE", raising=False)
    result = _run("create", "--tenant", "acme")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "geopin-keys.json").is_file()


def test_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    unknown = _run("revoke", "0123456789abcdef", "--keys-file", str(path))
    assert unknown.exit_code == 2
    assert "no key with id '0123456789abcdef'" in unknown.stderr
    assert not path.exists()

    bad_tenant = _run("create", "--tenant", "has space", "--keys-file", str(path))
    assert bad_tenant.exit_code == 2
    assert "invalid tenant 'has space'" in bad_tenant.stderr
    assert not path.exists()

    path.write_text('{"version": 1, "keys": [}')
    for args in (["list"], ["create", "--tenant", "acme"], ["revoke", "0123456789abcdef"]):
        result = _run(*args, "--keys-file", str(path))
        assert result.exit_code == 2
        assert result.stderr.startswith(f"Error: {path}:1:")
        assert "invalid JSON" in result.stderr
    assert path.read_text() == '{"version": 1, "keys": [}'  # left as it was


def test_list_of_an_empty_store_says_so(tmp_path: Path) -> None:
    result = _run("list", "--keys-file", str(tmp_path / "none.json"))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No keys in" in result.stderr
