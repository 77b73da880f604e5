from __future__ import annotations

import os
from ipaddress import ip_address
from pathlib import Path

import pytest

from geopin.errors import GeoIPError
from geopin.geo.location import Location, LocationSource
from geopin.geo.mmdb import MmdbResolver

from .conftest import BUILD_DATE, city_record, country_record

CITY = f"GeoIP2-City {BUILD_DATE}"


def located(resolver: MmdbResolver, address: str) -> Location:
    return resolver.lookup(ip_address(address))


@pytest.fixture
def city(make_mmdb) -> MmdbResolver:
    resolver = MmdbResolver(make_mmdb())
    yield resolver
    resolver.close()


def test_country_not_registered_country(city: MmdbResolver) -> None:
    # The block is registered in the US but the client is in Great Britain.
    assert located(city, "81.2.69.142") == Location(
        country="GB",
        subdivision="GB-ENG",
        source=LocationSource.MMDB,
        database=CITY,
        in_eu=False,
    )


def test_subdivision_is_the_full_iso_code_of_the_first_level(city: MmdbResolver) -> None:
    location = located(city, "89.160.20.112")
    assert (location.country, location.subdivision, location.in_eu) == ("SE", "SE-E", True)


def test_ipv6_networks(city: MmdbResolver) -> None:
    assert located(city, "2001:218::1").country == "JP"
    location = located(city, "2a02:cf40::5")
    assert (location.country, location.subdivision, location.in_eu) == ("FR", "FR-IDF", True)


def test_ipv4_mapped_addresses_find_ipv4_networks(city: MmdbResolver) -> None:
    assert located(city, "::ffff:81.2.69.142") == located(city, "81.2.69.142")


def test_addresses_outside_every_network_are_unknown_with_the_database_named(
    city: MmdbResolver,
) -> None:
    for address in ("8.8.8.8", "10.0.0.1", "2a03::1"):
        assert located(city, address) == Location(
            country=None, source=LocationSource.MMDB, database=CITY
        )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (city_record("NL", eu=True, anycast=True), None),
        (city_record(None, registered="US"), None),
        (city_record("US", registered="US", represented="DE"), "US"),
        # A record with only registered_country must not be taken as the client's country.
        ({"registered_country": {"iso_code": "FR"}}, None),
        (city_record("N1"), None),
        (city_record("de"), "DE"),
        ({"country": "DE"}, None),
        ("not a map", None),
    ],
)
def test_which_records_give_a_country(make_mmdb, record, expected: str | None) -> None:
    resolver = MmdbResolver(make_mmdb({"192.0.2.0/24": record}))
    try:
        location = located(resolver, "192.0.2.10")
    finally:
        resolver.close()
    assert location.country == expected
    assert (location.source, location.database) == (LocationSource.MMDB, CITY)
    if expected is None:
        assert location.in_eu is None and location.subdivision is None


@pytest.mark.parametrize(
    ("subdivisions", "expected"),
    [
        ([{"iso_code": "qc"}], "CA-QC"),
        ([], None),
        ([{"names": {"en": "no code"}}], None),
        ([{"iso_code": "TOOLONG"}], None),
        ("QC", None),
    ],
)
def test_subdivision_shapes(make_mmdb, subdivisions, expected: str | None) -> None:
    record = city_record("CA", subdivisions=subdivisions)
    resolver = MmdbResolver(make_mmdb({"192.0.2.0/24": record}))
    try:
        assert located(resolver, "192.0.2.10").subdivision == expected
    finally:
        resolver.close()


def test_eu_flag_absent_means_outside_the_eu(make_mmdb) -> None:
    resolver = MmdbResolver(make_mmdb({"192.0.2.0/24": city_record("CH")}))
    try:
        assert located(resolver, "192.0.2.1").in_eu is False
    finally:
        resolver.close()


def test_country_databases(make_mmdb) -> None:
    path = make_mmdb(
        {"81.2.69.0/24": country_record("GB"), "2001:218::/32": country_record("JP")},
        database_type="GeoLite2-Country",
    )
    resolver = MmdbResolver(path)
    try:
        assert located(resolver, "81.2.69.1") == Location(
            country="GB",
            source=LocationSource.MMDB,
            database=f"GeoLite2-Country {BUILD_DATE}",
            in_eu=False,
        )
        assert located(resolver, "2001:218::1").country == "JP"
    finally:
        resolver.close()


def test_ipv4_only_databases(make_mmdb) -> None:
    path = make_mmdb({"81.2.69.0/24": city_record("GB")}, ip_version=4)
    resolver = MmdbResolver(path)
    try:
        assert located(resolver, "81.2.69.1").country == "GB"
        assert located(resolver, "::ffff:81.2.69.1").country == "GB"
        assert located(resolver, "2001:218::1") == Location(
            country=None, source=LocationSource.MMDB, database=CITY
        )
    finally:
        resolver.close()


def test_lookup_network_gives_the_database_network(city: MmdbResolver) -> None:
    assert city.lookup_network(ip_address("81.2.69.142"))[1] == 24
    assert city.lookup_network(ip_address("2001:218::1"))[1] == 32


def test_database_name_and_description(city: MmdbResolver) -> None:
    assert city.database == CITY
    assert city.describe() == f"{CITY} ({city.path})"


# --- files that must be refused --------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.mmdb"
    with pytest.raises(GeoIPError, match=rf"^{path}: GeoIP database not found$"):
        MmdbResolver(path)


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="is a directory"):
        MmdbResolver(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file(make_mmdb) -> None:
    path = make_mmdb()
    path.chmod(0)
    with pytest.raises(
        GeoIPError, match=rf"^{path}: cannot read GeoIP database: Permission denied"
    ):
        MmdbResolver(path)


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(GeoIPError, match=rf"^{path}: not a valid MaxMind DB file: "):
        MmdbResolver(path)


def test_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mmdb"
    path.write_bytes(b"")
    with pytest.raises(GeoIPError, match=rf"^{path}: "):
        MmdbResolver(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_database(make_mmdb, keep: float) -> None:
    path = make_mmdb()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GeoIPError, match=rf"^{path}: "):
        MmdbResolver(path)


def test_a_damaged_search_tree_is_found_at_open(make_mmdb) -> None:
    path = make_mmdb()
    data = bytearray(path.read_bytes())
    # Point the root's records far past the end of the file.
    data[0:6] = b"\xff\xff\xfe\xff\xff\xfe"
    path.write_bytes(bytes(data))
    with pytest.raises(GeoIPError, match=rf"^{path}: corrupt database: "):
        MmdbResolver(path)


def test_a_corrupt_data_section_is_found_at_open(make_mmdb) -> None:
    path = make_mmdb()
    _corrupt_data_section(path)
    with pytest.raises(GeoIPError, match=rf"^{path}: corrupt database: "):
        MmdbResolver(path)


def test_corrupt_data_beyond_the_open_time_walk_is_a_geoip_error_at_lookup(make_mmdb) -> None:
    path = make_mmdb()
    _corrupt_data_section(path)
    resolver = MmdbResolver(path, verify_records=0)
    try:
        with pytest.raises(GeoIPError, match=rf"^{path}: corrupt data for 81\.2\.69\.142: "):
            resolver.lookup(ip_address("81.2.69.142"))
    finally:
        resolver.close()


@pytest.mark.parametrize("database_type", ["GeoIP2-Anonymous-IP", "GeoLite2-ASN", "Test"])
def test_other_database_types_are_refused(make_mmdb, database_type: str) -> None:
    path = make_mmdb(database_type=database_type)
    with pytest.raises(GeoIPError, match=f"database type '{database_type}' is not a GeoIP2"):
        MmdbResolver(path)


def test_a_closed_resolver_raises_geoip_error(make_mmdb) -> None:
    resolver = MmdbResolver(make_mmdb())
    resolver.close()
    with pytest.raises(GeoIPError, match="cannot look up"):
        resolver.lookup(ip_address("81.2.69.142"))


def _corrupt_data_section(path: Path) -> None:
    """Replace the type byte of every "GB" string with the reserved extended type 0."""
    data = bytearray(path.read_bytes())
    marker = b"\x42GB"  # UTF-8 string type (2) << 5 | length 2, then "GB"
    start = data.index(marker)
    while start >= 0:
        data[start] = 0x00
        data[start + 1] = 0xFF
        start = data.find(marker, start + 1)
    path.write_bytes(bytes(data))
