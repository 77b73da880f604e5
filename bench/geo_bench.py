"""Per-call cost of geolocation on the proxy's hot path; prints medians in microseconds.

    python bench/geo_bench.py [--mmdb PATH]

Without ``--mmdb`` a small City-shaped database is written to a temporary directory (needs
the ``mmdb-writer`` test dependency). Each figure is the median over repeated batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

from geopin.geo.client import IPAddress, TrustConfig, client_address
from geopin.geo.locator import locate
from geopin.geo.resolvers import CachingResolver, EmbeddedResolver, MmdbResolver

BATCH = 2000
ROUNDS = 31
TARGET_FAST_PATH_US = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmdb", help="a GeoIP2/GeoLite2 City or Country .mmdb file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mmdb_path = args.mmdb or _write_bench_mmdb(Path(tmp) / "bench.mmdb")
        return _run(mmdb_path)


def _run(mmdb_path: str) -> int:
    untrusted = TrustConfig()
    configured = TrustConfig.from_strings(["10.0.0.0/8", "fd00::/8"], ["198.51.100.0/24"])
    mmdb = CachingResolver(MmdbResolver(mmdb_path))
    embedded = CachingResolver(EmbeddedResolver())
    raw_mmdb = MmdbResolver(mmdb_path)
    raw_embedded = EmbeddedResolver()

    # Clients inside two database networks: every call after the first is a cache hit.
    peers = [f"81.2.69.{i}" for i in range(128, 192)] + [f"2001:218::{i:x}" for i in range(64)]
    no_headers: list[tuple[bytes, bytes]] = []
    browser_headers = [
        (b"host", b"geopin.example"),
        (b"user-agent", b"python-httpx/0.27"),
        (b"authorization", b"Bearer gpk_0123456789abcdef_secret"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"203.0.113.9"),  # spoofed, from an untrusted peer
    ]
    xff = [(b"x-forwarded-for", b"81.2.69.160, 10.1.2.3")]
    forwarded = [(b"forwarded", b'for="[2001:218::1]:4711";proto=https, for=10.1.2.3')]
    cdn = [(b"cf-connecting-ip", b"81.2.69.160"), (b"cf-ipcountry", b"DE")]

    for peer in peers:  # warm the caches
        locate(peer, no_headers, untrusted, mmdb)
        locate(peer, no_headers, untrusted, embedded)

    cases: list[tuple[str, Callable[[int], object]]] = [
        (
            "locate, untrusted peer, no forwarding headers, mmdb cache hit",
            lambda i: locate(peers[i & 127], no_headers, untrusted, mmdb),
        ),
        (
            "locate, same, with trust ranges configured (peer not in them)",
            lambda i: locate(peers[i & 127], no_headers, configured, mmdb),
        ),
        (
            "locate, untrusted peer, ordinary headers + spoofed XFF, mmdb hit",
            lambda i: locate(peers[i & 127], browser_headers, configured, mmdb),
        ),
        (
            "locate, untrusted peer, embedded cache hit",
            lambda i: locate(peers[i & 127], no_headers, untrusted, embedded),
        ),
        (
            "locate, trusted proxy, X-Forwarded-For chain, mmdb hit",
            lambda i: locate("10.0.0.1", xff, configured, mmdb),
        ),
        (
            "locate, trusted proxy, Forwarded with IPv6 and port, mmdb hit",
            lambda i: locate("10.0.0.1", forwarded, configured, mmdb),
        ),
        (
            "locate, trusted CDN, CF-Connecting-IP + CF-IPCountry",
            lambda i: locate("198.51.100.7", cdn, configured, mmdb),
        ),
        (
            "client_address only, untrusted peer",
            lambda i: client_address(peers[i & 127], no_headers, configured),
        ),
        (
            "uncached MmdbResolver.lookup (City record decode)",
            lambda i: raw_mmdb.lookup(_ADDRESSES[i & 127]),
        ),
        (
            "uncached EmbeddedResolver.lookup",
            lambda i: raw_embedded.lookup(_ADDRESSES[i & 127]),
        ),
    ]
    print(f"geo benchmark: median of {ROUNDS} rounds x {BATCH} calls; database {mmdb.describe()}")
    print(f"python {sys.version.split()[0]}")
    medians = []
    for name, call in cases:
        medians.append(_median_us(call))
        print(f"{medians[-1]:8.2f} us  {name}")
    verdict = "met" if medians[0] < TARGET_FAST_PATH_US else "MISSED"
    print(f"fast path (first line) target < {TARGET_FAST_PATH_US} us: {verdict}")
    for resolver in (mmdb, embedded, raw_mmdb, raw_embedded):
        resolver.close()
    return 0


def _median_us(call: Callable[[int], object]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(BATCH):
            call(i)
        samples.append((time.perf_counter() - start) / BATCH * 1e6)
    return statistics.median(samples)


def _addresses() -> list[IPAddress]:
    addresses = [ip_address(f"81.2.69.{i}") for i in range(128, 192)]
    addresses += [ip_address(f"2001:218::{i:x}") for i in range(64)]
    return addresses


_ADDRESSES = _addresses()


def _write_bench_mmdb(path: Path) -> str:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    record = {
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "registered_country": {"iso_code": "US", "names": {"en": "United States"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "city": {"names": {"en": "London"}},
        "location": {"latitude": 51.5, "longitude": -0.09, "time_zone": "Europe/London"},
    }
    writer.insert_network(IPSet(["81.2.69.128/26"]), record)
    writer.insert_network(
        IPSet(["2001:218::/32"]),
        {**record, "country": {"iso_code": "JP", "names": {"en": "Japan"}}, "subdivisions": []},
    )
    writer.to_db_file(str(path))
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
