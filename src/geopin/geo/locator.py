"""The one call the proxy makes per request: who is the client, and where is it."""

from __future__ import annotations

from collections.abc import Sequence

from geopin.geo.cdn import cdn_location
from geopin.geo.client import VIA_PEER_FALLBACK, ClientAddress, TrustConfig, resolve_client
from geopin.geo.location import UNKNOWN, Location
from geopin.geo.resolvers import Resolver


def locate(
    peer: str | None,
    headers: Sequence[tuple[bytes, bytes]],
    trust: TrustConfig,
    resolver: Resolver,
) -> tuple[ClientAddress, Location]:
    """The client's address and location.

    A trusted CDN's geo headers win (the CDN saw the client's own connection); otherwise the
    resolver locates the client address; without an address the location is UNKNOWN. When a
    trusted proxy's or CDN's header could not be read, the address is the peer (our own proxy)
    and its location says nothing about the client: the location is UNKNOWN (fail closed).
    Raises GeoIPError when the database is corrupt where the address falls: the caller
    treats that as an unknown location.
    """
    address, cdn_peer = resolve_client(peer, headers, trust)
    if cdn_peer is not None:
        location = cdn_location(cdn_peer, headers, trust)
        if location is not None:
            return address, location
    if address.ip is None or address.via == VIA_PEER_FALLBACK:
        return address, UNKNOWN
    return address, resolver.lookup(address.ip)
