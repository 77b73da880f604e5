"""Locations from a MaxMind GeoIP2/GeoLite2 Country or City database (``.mmdb``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from ipaddress import IPv6Address
from typing import Any

import maxminddb
from maxminddb import InvalidDatabaseError

from geopin.errors import GeoIPError
from geopin.geo.client import IPAddress
from geopin.geo.location import Location, LocationSource

# Database types with the GeoIP2 Country/City record shape (Enterprise is a City superset).
_SUPPORTED_KINDS = ("City", "Country", "Enterprise")
# Records walked at open time to find a corrupt file before the first request does.
DEFAULT_VERIFY_RECORDS = 20_000


class MmdbResolver:
    """Looks addresses up in one ``.mmdb`` file, opened (and checked) at construction.

    ``verify_records`` bounds the open-time walk of the search tree and data section; None
    walks the whole file. Corruption beyond the walk surfaces as GeoIPError from lookup.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify_records: int | None = DEFAULT_VERIFY_RECORDS,
    ) -> None:
        self.path = os.fspath(path)
        self._reader = _open(self.path)
        try:
            meta = self._reader.metadata()
            self._check_format(meta)
            self._walk(verify_records)
            self._check_kind(meta.database_type)
        except BaseException:
            self._reader.close()
            raise
        self._ipv4_only = meta.ip_version == 4
        built = datetime.fromtimestamp(meta.build_epoch, UTC).strftime("%Y-%m-%d")
        self.database = f"{meta.database_type} {built}"
        self._unknown = Location(country=None, source=LocationSource.MMDB, database=self.database)

    def lookup(self, ip: IPAddress) -> Location:
        return self.lookup_network(ip)[0]

    def lookup_network(self, ip: IPAddress) -> tuple[Location, int]:
        """The location and the prefix length of the database network holding ``ip``."""
        ip = _unmapped(ip)
        if ip.version == 6 and self._ipv4_only:
            return self._unknown, 0
        try:
            record, prefix = self._reader.get_with_prefix_len(ip)
        except InvalidDatabaseError as exc:
            raise GeoIPError(f"{self.path}: corrupt data for {ip}: {exc}") from exc
        except ValueError as exc:  # closed reader
            raise GeoIPError(f"{self.path}: cannot look up {ip}: {exc}") from exc
        return self._location(record), prefix

    def describe(self) -> str:
        return f"{self.database} ({self.path})"

    def close(self) -> None:
        self._reader.close()

    def _location(self, record: Any) -> Location:
        if not isinstance(record, dict):
            return self._unknown
        traits = record.get("traits")
        if isinstance(traits, dict) and traits.get("is_anycast") is True:
            # One anycast address answers in many countries: it says nothing of where.
            return self._unknown
        # Only "country" says where the client is: "registered_country" is where the block
        # was registered, "represented_country" whose forces or embassy use it.
        country = record.get("country")
        if not isinstance(country, dict):
            return self._unknown
        code = country.get("iso_code")
        if not (isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha()):
            return self._unknown
        code = code.upper()
        return Location(
            country=code,
            subdivision=_subdivision(code, record.get("subdivisions")),
            source=LocationSource.MMDB,
            database=self.database,
            # MaxMind leaves the flag out for countries outside the EU.
            in_eu=country.get("is_in_european_union") is True,
        )

    def _check_format(self, meta: Any) -> None:
        if meta.binary_format_major_version != 2:
            raise GeoIPError(
                f"{self.path}: unsupported MaxMind DB format version "
                f"{meta.binary_format_major_version}"
            )
        if meta.ip_version not in (4, 6):
            raise GeoIPError(f"{self.path}: invalid ip_version {meta.ip_version} in metadata")

    def _check_kind(self, database_type: str) -> None:
        if not any(kind in database_type for kind in _SUPPORTED_KINDS):
            raise GeoIPError(
                f"{self.path}: database type {database_type!r} is not a GeoIP2/GeoLite2 "
                "Country or City database"
            )

    def _walk(self, limit: int | None) -> None:
        if limit == 0:
            return
        walked = 0
        try:
            for _ in self._reader:
                walked += 1
                if limit is not None and walked >= limit:
                    return
        except InvalidDatabaseError as exc:
            raise GeoIPError(f"{self.path}: corrupt database: {_reason(exc)}") from exc


def _open(path: str) -> Any:
    if not os.path.exists(path):
        raise GeoIPError(f"{path}: GeoIP database not found")
    if os.path.isdir(path):
        raise GeoIPError(f"{path}: is a directory, not a GeoIP database")
    try:
        return maxminddb.open_database(path)
    except InvalidDatabaseError as exc:
        raise GeoIPError(f"{path}: not a valid MaxMind DB file: {_reason(exc)}") from exc
    except OSError as exc:
        raise GeoIPError(f"{path}: cannot read GeoIP database: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:  # metadata present but malformed
        raise GeoIPError(f"{path}: malformed MaxMind DB metadata: {exc}") from exc


def _unmapped(ip: IPAddress) -> IPAddress:
    # ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket: look up the IPv4 address.
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _reason(exc: Exception) -> str:
    return str(exc).rstrip(".") or type(exc).__name__


def _subdivision(country: str, subdivisions: Any) -> str | None:
    # The first subdivision is the largest (a state, a province); ISO 3166-2 prefixes it
    # with the country, and MaxMind stores only the part after the hyphen.
    if not isinstance(subdivisions, list) or not subdivisions:
        return None
    first = subdivisions[0]
    code = first.get("iso_code") if isinstance(first, dict) else None
    if not (isinstance(code, str) and 0 < len(code) <= 3 and code.isascii() and code.isalnum()):
        return None
    return f"{country}-{code.upper()}"
