"""Resolvers turn a client address into a Location; ``open_resolver`` picks one from settings."""

from __future__ import annotations

import os
from typing import Protocol

from geopin.geo.cache import CachingResolver, NetworkResolver
from geopin.geo.client import IPAddress
from geopin.geo.embedded import EmbeddedResolver
from geopin.geo.location import Location
from geopin.geo.mmdb import MmdbResolver

__all__ = [
    "CachingResolver",
    "EmbeddedResolver",
    "MmdbResolver",
    "NetworkResolver",
    "Resolver",
    "open_resolver",
]


class Resolver(Protocol):
    """Anything that locates an address. ``lookup`` may raise GeoIPError (corrupt data)."""

    def lookup(self, ip: IPAddress) -> Location: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def open_resolver(mmdb_path: str | os.PathLike[str] | None) -> CachingResolver:
    """The MaxMind database at ``mmdb_path`` or, without one, the embedded RIR data; cached.

    Raises GeoIPError when the database is missing, unreadable or corrupt.
    """
    inner: NetworkResolver = EmbeddedResolver() if mmdb_path is None else MmdbResolver(mmdb_path)
    return CachingResolver(inner)
