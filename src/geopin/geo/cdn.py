"""Locations stated by a trusted CDN in its geo headers (Cloudflare, CloudFront, Vercel).

Trust is decided on the immediate socket peer only: it must be in ``trusted_cdns``. A CDN
behind our own proxies is not recognised, on purpose: the proxy would have to vouch that the
headers it passes on came from the CDN, and nothing in the request can prove that.
"""

from __future__ import annotations

from collections.abc import Sequence

from geopin.geo.client import IPAddress, TrustConfig
from geopin.geo.iso import is_country, is_subdivision
from geopin.geo.location import Location, LocationSource

# (country header, region header or None), in order of preference.
_SOURCES: tuple[tuple[bytes, bytes | None], ...] = (
    (b"cf-ipcountry", None),
    (b"cloudfront-viewer-country", b"cloudfront-viewer-country-region"),
    (b"x-vercel-ip-country", b"x-vercel-ip-country-region"),
)
_NAMES = frozenset(name for pair in _SOURCES for name in pair if name is not None)
# Cloudflare's "no data" and "Tor exit": not places.
_NOT_COUNTRIES = frozenset(("XX", "T1"))


def cdn_location(
    peer_ip: IPAddress | None, headers: Sequence[tuple[bytes, bytes]], trust: TrustConfig
) -> Location | None:
    """The location a trusted CDN peer put in its headers, or None to fall through.

    A country code that ISO 3166-1 does not know is ignored (None); a region code that
    ISO 3166-2 does not know is dropped, keeping the country.
    """
    if peer_ip is None or not trust.is_cdn(peer_ip):
        return None
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        name = name.lower()
        if name in _NAMES:
            seen.setdefault(name, []).append(value)
    for country_header, region_header in _SOURCES:
        country = _single(seen.get(country_header))
        if country is None:
            continue
        country = country.upper()
        if country in _NOT_COUNTRIES or not is_country(country):
            continue
        subdivision = None
        region = _single(seen.get(region_header)) if region_header is not None else None
        if region:
            code = f"{country}-{region.upper()}"
            subdivision = code if is_subdivision(code) else None
        return Location(
            country=country,
            subdivision=subdivision,
            source=LocationSource.HEADER,
            database=country_header.decode(),
        )
    return None


def _single(values: list[bytes] | None) -> str | None:
    # A CDN sends each of these once; repeated, the request is not what the CDN sent.
    if values is None or len(values) != 1:
        return None
    return values[0].decode("latin-1").strip()
