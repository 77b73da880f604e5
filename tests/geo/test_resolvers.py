from __future__ import annotations

from importlib.metadata import version
from ipaddress import ip_address
from pathlib import Path

import pytest

from geopin.errors import GeoIPError
from geopin.geo.location import LocationSource
from geopin.geo.resolvers import (
    CachingResolver,
    EmbeddedResolver,
    MmdbResolver,
    Resolver,
    open_resolver,
)

from .conftest import BUILD_DATE


def test_with_a_path_the_mmdb_resolver_is_opened_and_cached(make_mmdb) -> None:
    path = make_mmdb()
    resolver: Resolver = open_resolver(str(path))
    try:
        assert isinstance(resolver, CachingResolver)
        assert isinstance(resolver.inner, MmdbResolver)
        location = resolver.lookup(ip_address("81.2.69.142"))
        assert (location.country, location.source) == ("GB", LocationSource.MMDB)
        assert resolver.describe() == f"GeoIP2-City {BUILD_DATE} ({path})"
    finally:
        resolver.close()


def test_path_objects_are_accepted(make_mmdb) -> None:
    resolver = open_resolver(make_mmdb())
    resolver.close()


def test_without_a_path_the_embedded_data_is_used() -> None:
    resolver = open_resolver(None)
    try:
        assert isinstance(resolver.inner, EmbeddedResolver)
        location = resolver.lookup(ip_address("8.8.8.8"))
        assert location.source is LocationSource.EMBEDDED
        assert location.database == f"iptocc {version('iptocc')}"
    finally:
        resolver.close()


def test_a_bad_path_raises_at_open(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="not found"):
        open_resolver(str(tmp_path / "nope.mmdb"))
