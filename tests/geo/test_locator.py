from __future__ import annotations

from ipaddress import ip_address

import pytest

from geopin.errors import GeoIPError
from geopin.geo.cache import CachingResolver
from geopin.geo.client import ClientAddress, TrustConfig
from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.geo.locator import locate
from geopin.geo.mmdb import MmdbResolver
from geopin.geo.resolvers import open_resolver

from .conftest import BUILD_DATE, raw_headers

TRUST = TrustConfig.from_strings(["10.0.0.0/8"], ["198.51.100.0/24"])


@pytest.fixture
def resolver(make_mmdb):
    resolver = open_resolver(make_mmdb())
    yield resolver
    resolver.close()


def test_an_untrusted_peer_is_located_by_its_own_address(resolver) -> None:
    headers = raw_headers(("x-forwarded-for", "2001:218::1"), ("cf-ipcountry", "DE"))
    address, location = locate("81.2.69.142", headers, TRUST, resolver)
    assert address == ClientAddress(ip_address("81.2.69.142"), "peer")
    assert location == Location(
        "GB", "GB-ENG", LocationSource.MMDB, f"GeoIP2-City {BUILD_DATE}", in_eu=False
    )


def test_the_forwarded_client_behind_a_trusted_proxy_is_located(resolver) -> None:
    headers = raw_headers(("x-forwarded-for", "89.160.20.112, 10.1.1.1"))
    address, location = locate("10.0.0.5", headers, TRUST, resolver)
    assert address.via == "x-forwarded-for"
    assert (location.country, location.subdivision) == ("SE", "SE-E")


def test_a_trusted_cdn_geo_header_wins_over_the_database(resolver) -> None:
    headers = raw_headers(("cf-connecting-ip", "81.2.69.142"), ("cf-ipcountry", "DE"))
    address, location = locate("198.51.100.9", headers, TRUST, resolver)
    assert address == ClientAddress(ip_address("81.2.69.142"), "cf-connecting-ip")
    assert location == Location("DE", source=LocationSource.HEADER, database="cf-ipcountry")


def test_an_unusable_cdn_geo_header_falls_through_to_the_database(resolver) -> None:
    headers = raw_headers(("cf-connecting-ip", "81.2.69.142"), ("cf-ipcountry", "XX"))
    _, location = locate("198.51.100.9", headers, TRUST, resolver)
    assert (location.country, location.source) == ("GB", LocationSource.MMDB)


def test_cdn_geo_headers_from_our_own_proxy_are_not_believed(resolver) -> None:
    headers = raw_headers(("x-forwarded-for", "81.2.69.142"), ("cf-ipcountry", "DE"))
    _, location = locate("10.0.0.5", headers, TRUST, resolver)
    assert (location.country, location.source) == ("GB", LocationSource.MMDB)


@pytest.mark.parametrize("peer", [None, "/run/geopin.sock"])
def test_no_address_means_unknown(resolver, peer) -> None:
    address, location = locate(peer, raw_headers(("cf-ipcountry", "DE")), TRUST, resolver)
    assert address.ip is None
    assert location is UNKNOWN


def test_a_corrupt_database_surfaces_as_geoip_error(make_mmdb) -> None:
    path = make_mmdb()
    data = bytearray(path.read_bytes())
    start = data.index(b"\x42GB")
    data[start : start + 2] = b"\x00\xff"
    path.write_bytes(bytes(data))
    resolver = CachingResolver(MmdbResolver(path, verify_records=0))
    try:
        with pytest.raises(GeoIPError):
            locate("81.2.69.142", [], TRUST, resolver)
        # Other networks still resolve: one bad record does not take the database down.
        assert locate("2001:218::1", [], TRUST, resolver)[1].country == "JP"
    finally:
        resolver.close()


@pytest.mark.parametrize(
    ("peer", "header"),
    [
        ("10.0.0.5", ("x-forwarded-for", "89.160.20.112, 10.1.1.1:99999")),
        ("198.51.100.7", ("cf-connecting-ip", "garbage")),
    ],
)
def test_an_unreadable_trusted_header_is_an_unknown_location_not_the_proxys(
    resolver, peer: str, header: tuple[str, str]
) -> None:
    # The fallback address is our own proxy or CDN edge: its location says nothing about the
    # client, so the policy's unknown-location default decides (fail closed).
    address, location = locate(peer, raw_headers(header), TRUST, resolver)
    assert (str(address.ip), address.via) == (peer, "peer-fallback")
    assert location is UNKNOWN
