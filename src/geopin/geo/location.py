"""The Location of a client: a pure value, shared by the geo adapters and the policy core."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LocationSource(StrEnum):
    """Where a Location came from, so a decision can be explained later."""

    HEADER = "header"  # a trusted CDN's geo header
    MMDB = "mmdb"  # a MaxMind GeoIP2/GeoLite2 database
    EMBEDDED = "embedded"  # the embedded RIR data (iptocc)
    NONE = "none"  # nothing resolved: the location is unknown
    DECLARED = "declared"  # given directly (policy explain, policy tests)


@dataclass(frozen=True, slots=True)
class Location:
    """A client's location.

    ``country`` is ISO 3166-1 alpha-2 (upper case) or None when unknown; ``subdivision`` is a
    full ISO 3166-2 code such as ``CA-QC`` (never the bare ``QC``). ``database`` names the data
    that produced it (``GeoIP2-City 2026-11-20``, ``iptocc 3.3.170``) for later explanation.
    """

    country: str | None
    subdivision: str | None = None
    source: LocationSource = LocationSource.NONE
    database: str | None = None
    in_eu: bool | None = None

    @property
    def known(self) -> bool:
        return self.country is not None


UNKNOWN = Location(country=None, source=LocationSource.NONE)
