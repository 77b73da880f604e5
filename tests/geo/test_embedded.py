from __future__ import annotations

from importlib.metadata import version
from ipaddress import ip_address

import iptocc
import pytest

from geopin.geo.embedded import EmbeddedResolver
from geopin.geo.location import LocationSource


@pytest.fixture(scope="module")
def resolver() -> EmbeddedResolver:
    return EmbeddedResolver()


@pytest.mark.parametrize("address", ["8.8.8.8", "81.2.69.142", "2a00:1450:4001::1"])
def test_public_addresses_resolve_as_iptocc_says(resolver: EmbeddedResolver, address: str) -> None:
    location = resolver.lookup(ip_address(address))
    expected = iptocc.country_code(address)
    assert expected is not None
    assert location.country == expected
    assert location.source is LocationSource.EMBEDDED
    assert location.database == f"iptocc {version('iptocc')}"
    assert location.subdivision is None


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",  # private
        "192.168.1.1",
        "127.0.0.1",  # loopback
        "169.254.1.1",  # link-local
        "100.64.0.1",  # shared (carrier-grade NAT)
        "192.0.2.1",  # documentation
        "240.0.0.1",  # reserved
        "224.0.0.1",  # multicast
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_unknown(resolver: EmbeddedResolver, address: str) -> None:
    location = resolver.lookup(ip_address(address))
    assert location.country is None
    assert location.source is LocationSource.EMBEDDED


def test_regional_rir_codes_are_not_countries(resolver: EmbeddedResolver) -> None:
    # RIR data marks some blocks "EU": a region, which must not reach the policy as a country.
    address = _address_where_iptocc_says("EU")
    if address is None:
        pytest.skip("this iptocc release has no block marked EU")
    assert resolver.lookup(ip_address(address)).country is None


def test_mapped_addresses_resolve_as_ipv4(resolver: EmbeddedResolver) -> None:
    assert resolver.lookup(ip_address("::ffff:8.8.8.8")) == resolver.lookup(ip_address("8.8.8.8"))


def test_answers_hold_for_the_exact_address_only(resolver: EmbeddedResolver) -> None:
    # iptocc answers differently inside one /24, so nothing wider may be cached.
    answers = {iptocc.country_code(f"193.201.148.{i}") for i in range(0, 256, 64)}
    assert len(answers) > 1, "the data no longer splits this /24: pick another example"
    assert resolver.lookup_network(ip_address("193.201.148.1"))[1] == 32
    assert resolver.lookup_network(ip_address("2a00:1450:4001::1"))[1] == 128


def test_describe_names_the_data(resolver: EmbeddedResolver) -> None:
    assert resolver.describe().startswith(f"iptocc {version('iptocc')}")
    resolver.close()  # nothing to release; still callable


def _address_where_iptocc_says(code: str) -> str | None:
    candidates = [f"{a}.{b}.0.1" for a in range(1, 224) for b in range(256)]
    for address, answer in zip(candidates, iptocc.country_code(candidates), strict=True):
        if answer == code:
            return address
    return None
