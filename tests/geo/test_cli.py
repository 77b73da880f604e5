"""``geopin geo`` (src/geopin/cli/geo.py), run through click's CliRunner on the group itself."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from geopin.cli.geo import geo

from .conftest import BUILD_DATE


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GEOPIN_GEOIP_DB", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(geo, ["lookup", *args])

    return invoke


def test_text_output(run, make_mmdb) -> None:
    result = run("81.2.69.142", "--geoip-db", str(make_mmdb()))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "address      81.2.69.142",
        "country      GB (United Kingdom)",
        "subdivision  GB-ENG (England)",
        "in EU        no",
        "source       mmdb",
        f"database     GeoIP2-City {BUILD_DATE}",
    ]


def test_json_output(run, make_mmdb) -> None:
    result = run("::ffff:89.160.20.112", "--geoip-db", str(make_mmdb()), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "address": "89.160.20.112",
        "country": "SE",
        "country_name": "Sweden",
        "subdivision": "SE-E",
        "subdivision_name": "Östergötlands län [SE-05]",
        "in_eu": True,
        "source": "mmdb",
        "database": f"GeoIP2-City {BUILD_DATE}",
    }


def test_unknown_location(run, make_mmdb) -> None:
    result = run("10.1.2.3", "--geoip-db", str(make_mmdb()), "--json")
    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    assert (fields["country"], fields["country_name"], fields["in_eu"]) == (None, None, None)
    text = run("10.1.2.3", "--geoip-db", str(make_mmdb())).stdout
    assert "country      unknown" in text


def test_embedded_data_by_default(run) -> None:
    result = run("8.8.8.8", "--json")
    assert result.exit_code == 0, result.output
    fields = json.loads(result.stdout)
    assert fields["source"] == "embedded"
    assert fields["database"] == f"iptocc {version('iptocc')}"
    assert fields["country"] is not None


def test_database_from_the_environment(make_mmdb, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOPIN_GEOIP_DB", str(make_mmdb()))
    result = CliRunner().invoke(geo, ["lookup", "2001:218::1", "--json"])
    assert json.loads(result.stdout)["country"] == "JP"


@pytest.mark.parametrize("bad", ["not-an-ip", "1.2.3", "81.2.69.142/24", ""])
def test_a_bad_ip_is_one_line_and_exit_2(run, bad: str) -> None:
    result = run(bad)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"Error: {bad!r} is not an IP address\n"


def test_a_missing_database_is_one_line_and_exit_2(run, tmp_path: Path) -> None:
    path = tmp_path / "missing.mmdb"
    result = run("81.2.69.142", "--geoip-db", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: GeoIP database not found\n"


def test_a_corrupt_database_is_one_line_and_exit_2(run, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.mmdb"
    path.write_bytes(b"\x00" * 1000)
    result = run("81.2.69.142", "--geoip-db", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}: not a valid MaxMind DB file")
    assert result.stderr.count("\n") == 1
