from __future__ import annotations

from ipaddress import ip_address

import pytest

from geopin.geo.cdn import cdn_location
from geopin.geo.client import TrustConfig
from geopin.geo.location import Location, LocationSource

from .conftest import raw_headers

TRUST = TrustConfig.from_strings(["10.0.0.0/8"], ["198.51.100.0/24", "2001:db8:cd::/48"])
CDN = ip_address("198.51.100.7")


def header_location(
    *pairs: tuple[str, str], peer=CDN, trust: TrustConfig = TRUST
) -> Location | None:
    return cdn_location(peer, raw_headers(*pairs), trust)


@pytest.mark.parametrize(
    ("pairs", "country", "subdivision", "database"),
    [
        ([("cf-ipcountry", "DE")], "DE", None, "cf-ipcountry"),
        ([("cf-ipcountry", " de ")], "DE", None, "cf-ipcountry"),
        (
            [("cloudfront-viewer-country", "US"), ("cloudfront-viewer-country-region", "CA")],
            "US",
            "US-CA",
            "cloudfront-viewer-country",
        ),
        ([("cloudfront-viewer-country", "CA")], "CA", None, "cloudfront-viewer-country"),
        (
            [("x-vercel-ip-country", "CA"), ("x-vercel-ip-country-region", "QC")],
            "CA",
            "CA-QC",
            "x-vercel-ip-country",
        ),
        (
            [("x-vercel-ip-country", "GB"), ("x-vercel-ip-country-region", "eng")],
            "GB",
            "GB-ENG",
            "x-vercel-ip-country",
        ),
    ],
)
def test_cdn_geo_headers(
    pairs: list[tuple[str, str]], country: str, subdivision: str | None, database: str
) -> None:
    assert header_location(*pairs) == Location(
        country=country, subdivision=subdivision, source=LocationSource.HEADER, database=database
    )


def test_an_ipv6_cdn_peer_is_trusted() -> None:
    location = header_location(("cf-ipcountry", "FR"), peer=ip_address("2001:db8:cd::1"))
    assert location is not None and location.country == "FR"


@pytest.mark.parametrize(
    "pairs",
    [
        [("cf-ipcountry", "XX")],  # Cloudflare: no data
        [("cf-ipcountry", "T1")],  # Cloudflare: Tor
        [("cf-ipcountry", "ZZ")],  # not a country
        [("cf-ipcountry", "EU")],  # not a country either
        [("cf-ipcountry", "DEU")],
        [("cf-ipcountry", "")],
        [("cf-ipcountry", "DE"), ("cf-ipcountry", "FR")],  # repeated: not what the CDN sent
        [("cloudfront-viewer-country-region", "CA")],  # region without a country
        [("x-vercel-ip-country", "Q1")],
        [],
    ],
)
def test_unusable_headers_fall_through(pairs: list[tuple[str, str]]) -> None:
    assert header_location(*pairs) is None


@pytest.mark.parametrize("region", ["ZZZ", "US-CA", "", "C A"])
def test_an_unknown_region_is_dropped_and_the_country_kept(region: str) -> None:
    location = header_location(
        ("cloudfront-viewer-country", "US"), ("cloudfront-viewer-country-region", region)
    )
    assert location is not None
    assert (location.country, location.subdivision) == ("US", None)


def test_an_invalid_country_falls_to_the_next_cdn_header() -> None:
    location = header_location(("cf-ipcountry", "XX"), ("x-vercel-ip-country", "NL"))
    assert location is not None
    assert (location.country, location.database) == ("NL", "x-vercel-ip-country")


@pytest.mark.parametrize(
    "peer",
    [
        ip_address("203.0.113.9"),  # anyone
        ip_address("10.0.0.5"),  # our own proxy is not the CDN
        None,
    ],
)
def test_headers_from_a_peer_that_is_not_a_trusted_cdn_are_ignored(peer) -> None:
    assert header_location(("cf-ipcountry", "DE"), peer=peer) is None


def test_no_cdns_configured_means_no_header_locations() -> None:
    assert header_location(("cf-ipcountry", "DE"), trust=TrustConfig()) is None
