"""Locations from the RIR delegation data shipped in the ``iptocc`` package: no licence, no file.

Country only, and only as precise as the registries' records of who holds a block.
"""

from __future__ import annotations

from importlib.metadata import version
from ipaddress import IPv6Address

import iptocc

from geopin.geo.client import IPAddress
from geopin.geo.iso import is_country
from geopin.geo.location import Location, LocationSource


class EmbeddedResolver:
    """Looks addresses up with ``iptocc``."""

    def __init__(self) -> None:
        self.database = f"iptocc {version('iptocc')}"
        self._unknown = Location(
            country=None, source=LocationSource.EMBEDDED, database=self.database
        )

    def lookup(self, ip: IPAddress) -> Location:
        return self.lookup_network(ip)[0]

    def lookup_network(self, ip: IPAddress) -> tuple[Location, int]:
        """The location, valid for this exact address only.

        RIR blocks are not aligned to /24: iptocc answers differently inside one /24
        (193.201.148.0/24 holds CY, DE, SE and NL quarters), so no wider prefix is safe.
        """
        exact = ip.max_prefixlen
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 client
        if not ip.is_global or ip.is_multicast:
            # Private, loopback, link-local, reserved, shared, documentation, multicast.
            return self._unknown, exact
        code = iptocc.country_code(str(ip))
        # The registries also use "EU" and "AP" for regional blocks: not countries.
        if code is None or not is_country(code.upper()):
            return self._unknown, exact
        return Location(
            country=code.upper(), source=LocationSource.EMBEDDED, database=self.database
        ), exact

    def describe(self) -> str:
        return f"{self.database} (embedded RIR data)"

    def close(self) -> None:
        pass
