"""geopin against MaxMind's own test databases and the source records they were built from.

The files live outside the repository (``/work/shared/geoip-testdata`` next to the checkout,
or ``$GEOPIN_GEOIP_TESTDATA``); without them this module is skipped.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from geopin.errors import GeoIPError
from geopin.geo.cache import CachingResolver
from geopin.geo.location import Location, LocationSource
from geopin.geo.mmdb import MmdbResolver


def _testdata() -> Path:
    configured = os.environ.get("GEOPIN_GEOIP_TESTDATA")
    return (
        Path(configured) if configured else Path(__file__).parents[3] / "shared" / "geoip-testdata"
    )


TESTDATA = _testdata()
pytestmark = pytest.mark.skipif(
    not (TESTDATA / "GeoIP2-City-Test.json").is_file(),
    reason=f"MaxMind test databases not found at {TESTDATA} (set GEOPIN_GEOIP_TESTDATA)",
)


def _source(name: str) -> list[tuple[str, dict[str, Any]]]:
    entries = json.loads((TESTDATA / name).read_text(encoding="utf-8"))
    return [(cidr, record) for entry in entries for cidr, record in entry.items()]


def _expected(record: dict[str, Any], database: str) -> Location:
    """What geopin should answer, derived independently from a source record."""
    country = record.get("country", {})
    if record.get("traits", {}).get("is_anycast") or "iso_code" not in country:
        return Location(None, source=LocationSource.MMDB, database=database)
    subdivisions = record.get("subdivisions") or []
    first = subdivisions[0].get("iso_code") if subdivisions else None
    return Location(
        country=country["iso_code"],
        subdivision=f"{country['iso_code']}-{first}" if first else None,
        source=LocationSource.MMDB,
        database=database,
        in_eu=bool(country.get("is_in_european_union", False)),
    )


def _database_name(path: Path) -> str:
    with maxminddb.open_database(path) as reader:
        meta = reader.metadata()
    built = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
    return f"{meta.database_type} {built}"


def _probes(cidr: str) -> list:
    network = ip_network(cidr, strict=False)
    # First, last and middle address of each source network.
    return sorted({network[0], network[-1], network[network.num_addresses // 2]})


@pytest.mark.parametrize(
    ("database", "source"),
    [
        ("GeoIP2-City-Test.mmdb", "GeoIP2-City-Test.json"),
        ("GeoIP2-Country-Test.mmdb", "GeoIP2-Country-Test.json"),
    ],
)
def test_every_source_network_resolves_as_its_record_says(database: str, source: str) -> None:
    path = TESTDATA / database
    name = _database_name(path)
    resolver = MmdbResolver(path, verify_records=None)
    cached = CachingResolver(MmdbResolver(path))
    checked = 0
    try:
        for cidr, record in _source(source):
            expected = _expected(record, name)
            for ip in _probes(cidr):
                got = resolver.lookup(ip)
                assert got == expected, f"{ip} in {cidr}: {record}"
                assert cached.lookup(ip) == got, f"{ip}: cache disagrees"
                checked += 1
    finally:
        resolver.close()
        cached.close()
    assert checked > 100


@pytest.mark.parametrize(
    "database",
    [
        "GeoIP2-City-Test.mmdb",
        "GeoLite2-City-Test.mmdb",
        "GeoIP2-Country-Test.mmdb",
        "GeoLite2-Country-Test.mmdb",
    ],
)
def test_every_network_in_the_file_resolves_as_its_raw_record_says(database: str) -> None:
    # The GeoLite2 files have no source JSON here: compare with MaxMind's own reader.
    path = TESTDATA / database
    name = _database_name(path)
    resolver = CachingResolver(MmdbResolver(path, verify_records=None))
    checked = 0
    try:
        with maxminddb.open_database(path) as reader:
            for network, record in reader:
                for ip in _probes(str(network)):
                    assert resolver.lookup(ip) == _expected(record, name), f"{ip} in {network}"
                    checked += 1
    finally:
        resolver.close()
    assert checked > 100


def test_registered_country_is_never_taken_for_the_country() -> None:
    # The source data has networks whose registered country differs from the country.
    path = TESTDATA / "GeoIP2-City-Test.mmdb"
    resolver = MmdbResolver(path)
    differing = [
        (cidr, record)
        for cidr, record in _source("GeoIP2-City-Test.json")
        if "country" in record
        and record.get("registered_country", {}).get("iso_code") != record["country"]["iso_code"]
    ]
    try:
        assert differing, "the source data has no such network any more"
        for cidr, record in differing:
            got = resolver.lookup(ip_network(cidr, strict=False)[0])
            assert got.country in (record["country"]["iso_code"], None), cidr
            assert got.country != record.get("registered_country", {}).get("iso_code"), cidr
    finally:
        resolver.close()


def test_anycast_networks_are_unknown() -> None:
    anycast = [
        cidr
        for cidr, record in _source("GeoIP2-City-Test.json")
        if record.get("traits", {}).get("is_anycast")
    ]
    if not anycast:
        pytest.skip("this copy of the source data marks no network anycast")
    resolver = MmdbResolver(TESTDATA / "GeoIP2-City-Test.mmdb")
    try:
        for cidr in anycast:
            assert resolver.lookup(ip_network(cidr, strict=False)[0]).country is None, cidr
    finally:
        resolver.close()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "corrupt database: .*data section"),
        ("MaxMind-DB-test-broken-search-tree-24.mmdb", "corrupt database: .*search tree"),
        (
            "GeoIP2-Anonymous-IP-Test.mmdb",
            "database type 'GeoIP2-Anonymous-IP' is not a GeoIP2/GeoLite2 Country or City",
        ),
    ],
)
def test_broken_and_unsuitable_files_are_refused(name: str, reason: str) -> None:
    path = TESTDATA / name
    with pytest.raises(GeoIPError, match=rf"^{path}: {reason}"):
        MmdbResolver(path)
