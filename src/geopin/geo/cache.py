"""A bounded cache of locations per database network, in front of any resolver."""

from __future__ import annotations

import threading
from collections import OrderedDict
from ipaddress import IPv4Address
from typing import Protocol

from geopin.geo.client import IPAddress
from geopin.geo.location import Location

# Rebuild the probe order after this many inserts, so the commonest prefixes are tried first.
_REORDER_EVERY = 1024


class NetworkResolver(Protocol):
    """A resolver that says how far its answer holds: the prefix length around the address."""

    def lookup_network(self, ip: IPAddress) -> tuple[Location, int]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class CachingResolver:
    """Caches each answer for the whole network it holds for.

    An entry is keyed by (IP version, prefix length, network bits). A lookup tries each
    prefix length present in the cache, commonest first; database networks are disjoint,
    so at most one can match. Eviction is first-in first-out: a hit changes nothing, so reads
    take no lock and are safe from threads and the event loop alike; inserts take a lock.
    """

    def __init__(self, inner: NetworkResolver, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.inner = inner
        self.max_entries = max_entries
        self._entries: OrderedDict[int, Location] = OrderedDict()
        self._per_tag: dict[int, int] = {}  # entries per (prefix length, version) tag
        # (shift, tag) pairs to probe, per version; replaced whole, never mutated.
        self._probes_v4: tuple[tuple[int, int], ...] = ()
        self._probes_v6: tuple[tuple[int, int], ...] = ()
        self._inserts = 0
        self._lock = threading.Lock()

    def lookup(self, ip: IPAddress) -> Location:
        n = int(ip)
        if ip.version == 4:
            probes = self._probes_v4
        elif n >> 32 == 0xFFFF:
            # IPv4-mapped: the inner resolver answers for the IPv4 address and its network.
            n &= 0xFFFFFFFF
            ip = IPv4Address(n)
            probes = self._probes_v4
        else:
            probes = self._probes_v6
        entries = self._entries
        for shift, tag in probes:
            location = entries.get((n >> shift) << 9 | tag)
            if location is not None:
                return location
        return self._miss(ip, n)

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._per_tag.clear()
            self._probes_v4 = self._probes_v6 = ()
        self.inner.close()

    def _miss(self, ip: IPAddress, n: int) -> Location:
        location, prefix = self.inner.lookup_network(ip)
        bits = ip.max_prefixlen
        prefix = min(max(prefix, 0), bits)
        shift = bits - prefix
        tag = prefix << 1 | (ip.version == 6)
        key = (n >> shift) << 9 | tag
        with self._lock:
            if key in self._entries:
                return location
            while len(self._entries) >= self.max_entries:
                old_key, _ = self._entries.popitem(last=False)
                self._per_tag[old_key & 0x1FF] -= 1
            self._entries[key] = location
            known = tag in self._per_tag
            self._per_tag[tag] = self._per_tag.get(tag, 0) + 1
            self._inserts += 1
            if not known or self._inserts % _REORDER_EVERY == 0:
                self._reorder()
        return location

    def _reorder(self) -> None:
        # Called with the lock held. Tags whose entries were all evicted are dropped.
        tags = sorted(
            (tag for tag, count in self._per_tag.items() if count > 0),
            key=lambda tag: -self._per_tag[tag],
        )
        for tag in [tag for tag, count in self._per_tag.items() if count <= 0]:
            del self._per_tag[tag]
        self._probes_v4 = tuple((32 - (tag >> 1), tag) for tag in tags if not tag & 1)
        self._probes_v6 = tuple((128 - (tag >> 1), tag) for tag in tags if tag & 1)
