from __future__ import annotations

import threading
from ipaddress import ip_address, ip_network

import pytest

from geopin.errors import GeoIPError
from geopin.geo.cache import CachingResolver
from geopin.geo.embedded import EmbeddedResolver
from geopin.geo.location import Location, LocationSource
from geopin.geo.mmdb import MmdbResolver

from .conftest import city_record


class CountingResolver:
    """Wraps a real resolver and counts the lookups that reach it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.closed = False

    def lookup_network(self, ip):
        self.calls.append(str(ip))
        return self.inner.lookup_network(ip)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


@pytest.fixture
def counted(make_mmdb):
    inner = CountingResolver(MmdbResolver(make_mmdb()))
    yield inner
    inner.inner.close()


def test_every_address_in_a_database_network_is_one_miss(counted) -> None:
    cache = CachingResolver(counted)
    network = ip_network("81.2.69.0/24")
    answers = {cache.lookup(ip) for ip in network}
    assert answers == {counted.inner.lookup(ip_address("81.2.69.1"))}
    assert counted.calls == ["81.2.69.0"]
    assert len(cache) == 1


def test_ipv6_networks_are_cached_per_network(counted) -> None:
    cache = CachingResolver(counted)
    for address in ("2001:218::1", "2001:218:ffff:ffff:ffff:ffff:ffff:ffff", "2001:218::1:2:3"):
        assert cache.lookup(ip_address(address)).country == "JP"
    assert counted.calls == ["2001:218::1"]


def test_cached_answers_equal_uncached_answers(counted) -> None:
    cache = CachingResolver(counted)
    addresses = [
        "81.2.69.5",
        "81.2.70.5",
        "89.160.20.1",
        "2001:218::1",
        "2001:219::1",
        "2a02:cf40::1",
        "::ffff:81.2.69.9",
        "8.8.8.8",
    ]
    for _ in range(2):
        for address in addresses:
            ip = ip_address(address)
            assert cache.lookup(ip) == counted.inner.lookup(ip), address


def test_mapped_addresses_share_the_ipv4_entry(counted) -> None:
    cache = CachingResolver(counted)
    cache.lookup(ip_address("81.2.69.1"))
    assert cache.lookup(ip_address("::ffff:81.2.69.200")).country == "GB"
    assert counted.calls == ["81.2.69.1"]
    # ...and a mapped address never caches a network across IPv6 space.
    assert cache.lookup(ip_address("::1")).country is None


def test_neighbouring_networks_of_different_sizes_stay_apart(make_mmdb) -> None:
    path = make_mmdb(
        {
            "192.0.2.0/25": city_record("DE"),
            "192.0.2.128/26": city_record("FR"),
            "192.0.2.192/32": city_record("NL"),
            "2001:db8::/33": city_record("JP"),
            "2001:db8:8000::/48": city_record("KR"),
        }
    )
    inner = MmdbResolver(path)
    cache = CachingResolver(inner)
    try:
        probes = [f"192.0.2.{i}" for i in range(256)] + [
            "2001:db8::1",
            "2001:db8:8000::1",
            "2001:db8:8001::1",
            "2001:db8:7fff::1",
        ]
        for _ in range(2):
            for address in probes:
                ip = ip_address(address)
                assert cache.lookup(ip) == inner.lookup(ip), address
    finally:
        cache.close()


def test_the_cache_is_bounded(counted) -> None:
    cache = CachingResolver(counted, max_entries=3)
    networks = ["81.2.69.1", "89.160.20.1", "2001:218::1", "2a02:cf40::1", "8.8.8.8"]
    for address in networks:
        cache.lookup(ip_address(address))
    assert len(cache) == 3
    # The oldest entries went first: looking them up again reaches the database.
    counted.calls.clear()
    cache.lookup(ip_address("8.8.8.8"))
    assert counted.calls == []
    cache.lookup(ip_address("81.2.69.1"))
    assert counted.calls == ["81.2.69.1"]
    assert len(cache) == 3


def test_embedded_answers_are_cached_per_address() -> None:
    counted = CountingResolver(EmbeddedResolver())
    cache = CachingResolver(counted)
    # Four quarters of one /24 that the RIR data places in different countries.
    quarters = [ip_address(f"193.201.148.{i}") for i in (1, 65, 129, 193)]
    answers = [cache.lookup(ip) for ip in quarters]
    assert answers == [counted.inner.lookup(ip) for ip in quarters]
    assert len({a.country for a in answers}) > 1
    cache.lookup(quarters[0])
    assert len(counted.calls) == 4


def test_errors_are_not_cached(make_mmdb) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = True

        def lookup_network(self, ip):
            if self.fail:
                raise GeoIPError("corrupt data")
            return Location("DE", source=LocationSource.MMDB), 24

        def describe(self) -> str:
            return "flaky"

        def close(self) -> None:
            pass

    inner = Flaky()
    cache = CachingResolver(inner)
    with pytest.raises(GeoIPError):
        cache.lookup(ip_address("192.0.2.1"))
    inner.fail = False
    assert cache.lookup(ip_address("192.0.2.1")).country == "DE"


def test_threads_see_consistent_answers(counted) -> None:
    cache = CachingResolver(counted, max_entries=2)
    addresses = [ip_address(a) for a in ("81.2.69.7", "89.160.20.7", "2001:218::7", "8.8.4.4")]
    expected = {ip: counted.inner.lookup(ip) for ip in addresses}
    failures: list[str] = []

    def work(offset: int) -> None:
        for i in range(3000):
            ip = addresses[(i + offset) % len(addresses)]
            if cache.lookup(ip) != expected[ip]:
                failures.append(str(ip))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(cache) <= 2


def test_close_empties_the_cache_and_closes_the_inner_resolver(counted) -> None:
    cache = CachingResolver(counted)
    cache.lookup(ip_address("81.2.69.1"))
    cache.close()
    assert len(cache) == 0 and counted.closed


def test_describe_is_the_inner_description(counted) -> None:
    assert CachingResolver(counted).describe() == counted.describe()


def test_max_entries_must_be_positive(counted) -> None:
    with pytest.raises(ValueError):
        CachingResolver(counted, max_entries=0)


def test_ipv4_and_ipv6_entries_with_equal_bits_stay_apart(counted) -> None:
    # 81.2.69.1 and ::5102:4501 are the same integer; only the version tells them apart.
    cache = CachingResolver(counted)
    v4, v6 = ip_address("81.2.69.1"), ip_address("::5102:4501")
    assert int(v4) == int(v6)
    assert cache.lookup(v4) == counted.inner.lookup(v4)
    assert cache.lookup(v6) == counted.inner.lookup(v6)
    assert counted.calls == ["81.2.69.1", "::5102:4501"]
