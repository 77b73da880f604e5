"""Where a client is: its address, and the location that address resolves to.

The names below are imported lazily, so that importing ``geopin.geo.location`` (the policy
core does) never loads the GeoIP readers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ClientAddress": "geopin.geo.client",
    "TrustConfig": "geopin.geo.client",
    "client_address": "geopin.geo.client",
    "cdn_location": "geopin.geo.cdn",
    "locate": "geopin.geo.locator",
    "Resolver": "geopin.geo.resolvers",
    "open_resolver": "geopin.geo.resolvers",
    "CachingResolver": "geopin.geo.resolvers",
    "EmbeddedResolver": "geopin.geo.resolvers",
    "MmdbResolver": "geopin.geo.resolvers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geopin.geo' has no attribute {name!r}")
    return getattr(import_module(module), name)
