"""Factories for the geo tests: GeoIP2-shaped records, .mmdb files, ASGI headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

# 2024-03-05 12:00 UTC: a build date far from midnight, so no time zone can move it.
BUILD_EPOCH = int(datetime(2024, 3, 5, 12, tzinfo=UTC).timestamp())
BUILD_DATE = "2024-03-05"


def city_record(
    country: str | None = "DE",
    *,
    eu: bool | None = None,
    registered: str | None = None,
    represented: str | None = None,
    subdivision: str | None = None,
    anycast: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A GeoIP2-City-shaped record. ``eu=None`` leaves the flag out, as MaxMind does."""
    record: dict[str, Any] = {"continent": {"code": "EU", "names": {"en": "Europe"}}}
    if country is not None:
        record["country"] = {"iso_code": country, "names": {"en": country}}
        if eu is not None:
            record["country"]["is_in_european_union"] = eu
    record["registered_country"] = {
        "iso_code": registered or country or "US",
        "is_in_european_union": True,
    }
    if represented is not None:
        record["represented_country"] = {"iso_code": represented, "type": "military"}
    if subdivision is not None:
        record["subdivisions"] = [
            {"iso_code": subdivision, "names": {"en": subdivision}},
            {"iso_code": "ZZZ", "names": {"en": "a second-level subdivision"}},
        ]
    if anycast:
        record["traits"] = {"is_anycast": True}
    record.update(overrides)
    return record


def country_record(country: str, *, eu: bool | None = None) -> dict[str, Any]:
    """A GeoIP2-Country-shaped record: no subdivisions, no city."""
    record = city_record(country, eu=eu)
    record.pop("subdivisions", None)
    return record


class _Writer(MMDBWriter):
    """MMDBWriter with a fixed build date, so database names are predictable."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": self._build_epoch}


def write_mmdb(
    path: Path,
    networks: Mapping[str, Any],
    *,
    ip_version: int = 6,
    database_type: str = "GeoIP2-City",
    build_epoch: int = BUILD_EPOCH,
) -> Path:
    """Write ``{cidr: record}`` to ``path``; IPv4 networks in an IPv6 database go under ::/96."""
    has_v4 = any(":" not in cidr for cidr in networks)
    writer = _Writer(
        build_epoch,
        ip_version=ip_version,
        database_type=database_type,
        ipv4_compatible=ip_version == 6 and has_v4,
        languages=["en"],
        description="geopin test database",
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


DEFAULT_NETWORKS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": city_record("GB", registered="US", subdivision="ENG", eu=False),
    "89.160.20.0/24": city_record("SE", registered="DE", subdivision="E", eu=True),
    "2001:218::/32": city_record("JP"),
    "2a02:cf40::/29": city_record("FR", eu=True, subdivision="IDF"),
}


@pytest.fixture
def make_mmdb(tmp_path: Path) -> Callable[..., Path]:
    """``make_mmdb(networks=None, name="test.mmdb", **write_mmdb options) -> Path``."""

    def make(
        networks: Mapping[str, Any] | None = None, name: str = "test.mmdb", **options: Any
    ) -> Path:
        return write_mmdb(
            tmp_path / name, DEFAULT_NETWORKS if networks is None else networks, **options
        )

    return make


def raw_headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    """ASGI raw headers from ``(name, value)`` strings: lower-case names, latin-1 bytes."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
