from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.errors import ConfigError
from geopin.geo.client import (
    VIA_PEER_FALLBACK,
    ClientAddress,
    TrustConfig,
    client_address,
    parse_ip,
)

from .conftest import raw_headers

PROXY = "10.0.0.5"
CDN = "198.51.100.7"
CLIENT = "203.0.113.9"
TRUST = TrustConfig.from_strings(
    ["10.0.0.0/8", "fd00::/8"], ["198.51.100.0/24", "2001:db8:cd::/48"]
)


# Proxies that write RFC 7239 Forwarded instead of X-Forwarded-For.
TRUST_FORWARDED = TrustConfig.from_strings(
    ["10.0.0.0/8", "fd00::/8"], ["198.51.100.0/24", "2001:db8:cd::/48"], "forwarded"
)


def via(peer: str | None, *pairs: tuple[str, str], trust: TrustConfig = TRUST) -> tuple[str, str]:
    """(address, header used) for a request, the form most assertions want."""
    result = client_address(peer, raw_headers(*pairs), trust)
    return (str(result.ip) if result.ip is not None else "none", result.via)


# --- the socket peer --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("::FFFF:cb00:7109", "203.0.113.9"),
        ("fe80::1%eth0", "fe80::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        (" 203.0.113.9 ", "203.0.113.9"),
    ],
)
def test_peer_is_the_client_and_is_normalised(peer: str, expected: str) -> None:
    assert via(peer) == (expected, "peer")


@pytest.mark.parametrize(
    "peer", [None, "", "/run/geopin.sock", "unix:/tmp/x", "localhost", "1.2.3"]
)
def test_a_peer_that_is_not_an_ip_gives_no_address(peer: str | None) -> None:
    assert client_address(peer, raw_headers(("x-forwarded-for", CLIENT)), TRUST) == ClientAddress(
        None, "peer"
    )


def test_normalised_mapped_peer_matches_ipv4_trust_ranges() -> None:
    assert via("::ffff:10.0.0.5", ("x-forwarded-for", CLIENT)) == (CLIENT, "x-forwarded-for")


# --- spoofing from untrusted peers -------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        ("x-forwarded-for", "81.2.69.142"),
        ("forwarded", "for=81.2.69.142"),
        ("cf-connecting-ip", "81.2.69.142"),
        ("true-client-ip", "81.2.69.142"),
        ("cloudfront-viewer-address", "81.2.69.142:443"),
    ],
)
def test_forwarding_headers_from_an_untrusted_peer_are_ignored(header: tuple[str, str]) -> None:
    assert via(CLIENT, header) == (CLIENT, "peer")


def test_a_trusted_cdn_header_from_a_mere_proxy_is_ignored() -> None:
    # CF-Connecting-IP is believed only from the CDN itself, not from our own proxy.
    assert via(PROXY, ("cf-connecting-ip", "81.2.69.142")) == (PROXY, "peer")


def test_forwarding_headers_from_a_cdn_that_is_not_a_proxy_are_ignored() -> None:
    assert via(CDN, ("x-forwarded-for", "81.2.69.142")) == (CDN, "peer")


# --- rightmost-untrusted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        (CLIENT, CLIENT),
        (f"{CLIENT}, 10.1.1.1", CLIENT),
        (f"{CLIENT}, 10.1.1.1, 10.2.2.2", CLIENT),
        # The spoofed entry on the left is the client's own claim: never taken.
        (f"81.2.69.142, {CLIENT}", CLIENT),
        (f"81.2.69.142, {CLIENT}, 10.1.1.1", CLIENT),
        # Junk left of the client is the client's own: ignored, not a reason to give up.
        (f"garbage, {CLIENT}", CLIENT),
        (f"unknown, _hidden, {CLIENT}, 10.1.1.1", CLIENT),
        # A CDN hop appended by our proxy is skipped like our own proxies.
        (f"{CLIENT}, 198.51.100.20", CLIENT),
        # All trusted: the leftmost is the best we have.
        ("10.9.9.9, 10.1.1.1", "10.9.9.9"),
    ],
)
def test_x_forwarded_for_rightmost_untrusted(xff: str, expected: str) -> None:
    assert via(PROXY, ("x-forwarded-for", xff)) == (expected, "x-forwarded-for")


def test_several_header_lines_are_one_list_in_order() -> None:
    got = via(
        PROXY,
        ("x-forwarded-for", "81.2.69.142"),
        ("x-forwarded-for", f"{CLIENT}, 10.1.1.1"),
        ("x-forwarded-for", "10.2.2.2"),
    )
    assert got == (CLIENT, "x-forwarded-for")
    # Order matters: the same lines the other way round end at the other address.
    got = via(
        PROXY,
        ("x-forwarded-for", f"{CLIENT}, 10.1.1.1"),
        ("x-forwarded-for", "81.2.69.142"),
    )
    assert got == ("81.2.69.142", "x-forwarded-for")


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("2001:db8::9", "2001:db8::9"),
        ("[2001:db8::9]", "2001:db8::9"),
        ("[2001:db8::9]:443", "2001:db8::9"),
        ("203.0.113.9:52311", CLIENT),
        ("::ffff:203.0.113.9", CLIENT),
        ("[::ffff:203.0.113.9]:80", CLIENT),
        ("fe80::9%eth0", "fe80::9"),
        ("  203.0.113.9  ,\t10.1.1.1 ", CLIENT),
        ("2001:DB8::9, fd00::1", "2001:db8::9"),
    ],
)
def test_x_forwarded_for_address_forms(xff: str, expected: str) -> None:
    assert via(PROXY, ("x-forwarded-for", xff)) == (expected, "x-forwarded-for")


@pytest.mark.parametrize(
    "xff",
    [
        "",
        " ",
        "garbage",
        f"{CLIENT}, garbage",
        f"{CLIENT},,10.1.1.1",
        "unknown",
        "_hidden",
        "203.0.113.9:",
        "203.0.113.9:0",
        "203.0.113.9:65536",
        "203.0.113.9:http",
        "203.0.113.9:1:2",
        "[2001:db8::9",
        "2001:db8::9]",
        "[203.0.113.9]",
        "[2001:db8::9]443",
        "[2001:db8::9]:",
        "2001:db8::9%",
        "203.0.113.09",
        "203.0.113.9 10.1.1.1",
        "1.2.3.4.5",
        "\u00e9.1.1.1",
    ],
)
def test_malformed_x_forwarded_for_falls_back_to_the_peer(xff: str) -> None:
    # Each of these is bad in the client's slot or in a hop our proxy appended.
    assert via(PROXY, ("x-forwarded-for", xff)) == (PROXY, "peer-fallback")


@pytest.mark.parametrize(
    "junk",
    [
        "garbage",
        "unknown",
        "_hidden",
        "",
        " ",
        '"',
        "for=",
        "1.2.3.4.5",
        "203.0.113.9:http",
        "[2001:db8::9",
        "2001:db8::9]",
        "a,,b, ,c",
        "\u00e9.1.1.1",
        "10.1.1.1, garbage",
        "81.2.69.142 10.1.1.1",
    ],
)
@pytest.mark.parametrize("proxies", ["", ", 10.1.1.1", ", 10.1.1.1, 198.51.100.20"])
def test_x_forwarded_for_ignores_whatever_the_client_wrote_left_of_itself(
    junk: str, proxies: str
) -> None:
    xff = f"{junk}, {CLIENT}{proxies}"
    assert via(PROXY, ("x-forwarded-for", xff)) == (CLIENT, "x-forwarded-for")
    # Junk in a header line of its own, before the line our proxy appended, is the same.
    got = via(PROXY, ("x-forwarded-for", junk), ("x-forwarded-for", f"{CLIENT}{proxies}"))
    assert got == (CLIENT, "x-forwarded-for")


@pytest.mark.parametrize(
    "xff",
    [
        # The client's slot, written by our proxy, is not an address.
        "unknown",
        "_hidden, 10.1.1.1",
        "garbage, 10.1.1.1, 10.2.2.2",
        # A hop our proxy appended is not an address: the client's slot is unknowable.
        f"{CLIENT}, unknown",
        f"{CLIENT}, 10.1.1.1, _hidden",
        f"{CLIENT}, 10.1.1.1:http, 10.2.2.2",
        f"{CLIENT}, 10.1.1.1, ",
        # All trusted, then junk: the walk reads the junk as the client's slot.
        "junk, 10.9.9.9, 10.1.1.1",
    ],
)
def test_a_malformed_entry_the_walk_reads_is_a_marked_peer_fallback(xff: str) -> None:
    result = client_address(PROXY, raw_headers(("x-forwarded-for", xff)), TRUST)
    assert result == ClientAddress(ip_address(PROXY), VIA_PEER_FALLBACK)
    assert VIA_PEER_FALLBACK == "peer-fallback"


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (f"for={CLIENT}", CLIENT),
        (f'for="{CLIENT}"', CLIENT),
        (f'for="{CLIENT}:4711"', CLIENT),
        (f"for={CLIENT}:4711", CLIENT),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]:_port1"', "2001:db8:cafe::17"),
        ('for="[fe80::1%25eth0]"', "fe80::1"),
        (f"For={CLIENT};Proto=https;By=10.0.0.5", CLIENT),
        (f"proto=https;for={CLIENT};host=example.com", CLIENT),
        (f'for={CLIENT};host="a \\"quoted\\" host", for=10.1.1.1', CLIENT),
        (f"for=81.2.69.142, for={CLIENT}, for=10.1.1.1", CLIENT),
        (f"for=81.2.69.142 ,\tfor={CLIENT} ; proto=http", CLIENT),
        # Junk left of the client is the client's own: ignored, not a reason to give up.
        (f"for=_hidden, for={CLIENT}", CLIENT),
        (f",for={CLIENT}", CLIENT),
        ("for=10.9.9.9, for=10.1.1.1", "10.9.9.9"),
        ('for="[::ffff:203.0.113.9]"', CLIENT),
    ],
)
def test_forwarded_rightmost_untrusted(forwarded: str, expected: str) -> None:
    assert via(PROXY, ("forwarded", forwarded), trust=TRUST_FORWARDED) == (expected, "forwarded")


def test_forwarded_lines_join_in_order() -> None:
    got = via(
        PROXY,
        ("forwarded", "for=81.2.69.142"),
        ("forwarded", f"for={CLIENT}"),
        trust=TRUST_FORWARDED,
    )
    assert got == (CLIENT, "forwarded")


@pytest.mark.parametrize(
    "forwarded",
    [
        "",
        "for=",
        'for=""',
        "for=unknown",
        'for="unknown"',
        "for=_hidden",
        'for="_SEVKISEK"',
        "proto=https",
        f"for={CLIENT};for=81.2.69.142",
        f"for={CLIENT}, proto=https",
        f"for={CLIENT},",
        f"for={CLIENT};",
        f"for {CLIENT}",
        f'for="{CLIENT}',
        'for="[2001:db8::17"',
        "for=2001:db8::17",
        'for="2001:db8::17"',
        'for="[2001:db8::17]:99999"',
        'for="[2001:db8::17]:"',
        'for="[2001:db8::17]x"',
        f'for="{CLIENT}:port"',
        f'for="{CLIENT}:_"',
        f'for="{CLIENT}:_bad!"',
        f"for={CLIENT} garbage",
        f"=x;for={CLIENT}",
        f'for="{CLIENT}\\',
    ],
)
def test_malformed_forwarded_falls_back_to_the_peer(forwarded: str) -> None:
    assert via(PROXY, ("forwarded", forwarded), trust=TRUST_FORWARDED) == (PROXY, "peer-fallback")


@pytest.mark.parametrize(
    "junk",
    [
        "for=_hidden",
        "for=unknown",
        'for="unknown"',
        "garbage",
        "proto=https",
        "",
        ";;=",
        "for=2001:db8::17",
        'for="[2001:db8::17"',
        # An unterminated quote must not swallow the elements our proxies appended.
        'for="',
        'for="81.2.69.142',
        'host="a\\", for=81.2.69.142',
        # A quoted comma, so a left-to-right split would see a different list.
        'host="a, for=81.2.69.142"',
        'for=81.2.69.142;host="x\\"',
        "\\",
    ],
)
@pytest.mark.parametrize("proxies", ["", ", for=10.1.1.1;proto=https", ', for="[fd00::6]:443"'])
def test_forwarded_ignores_whatever_the_client_wrote_left_of_itself(
    junk: str, proxies: str
) -> None:
    forwarded = f"{junk}, for={CLIENT}{proxies}"
    assert via(PROXY, ("forwarded", forwarded), trust=TRUST_FORWARDED) == (CLIENT, "forwarded")
    got = via(
        PROXY, ("forwarded", junk), ("forwarded", f"for={CLIENT}{proxies}"), trust=TRUST_FORWARDED
    )
    assert got == (CLIENT, "forwarded")


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        # Quoted commas and escaped quotes inside elements our proxies wrote.
        (f'for=81.2.69.142, for={CLIENT};host="a,b", for=10.1.1.1', CLIENT),
        (f'for="[2001:db8::9]", for={CLIENT};host="a\\",b\\\\"', CLIENT),
        (f'for="81.2.69.142", for="{CLIENT}:4711", for="10.1.1.1";host="x,\\"y"', CLIENT),
    ],
)
def test_forwarded_elements_split_on_commas_outside_quotes(forwarded: str, expected: str) -> None:
    assert via(PROXY, ("forwarded", forwarded), trust=TRUST_FORWARDED) == (expected, "forwarded")


@pytest.mark.parametrize(
    "forwarded",
    [
        f"for={CLIENT}, for=_hidden",
        f"for={CLIENT}, for=unknown;proto=https",
        f"for={CLIENT}, proto=https;by=10.0.0.5",
        "for=_hidden, for=10.1.1.1",
        f'for={CLIENT}, for="10.1.1.1',
        f'for={CLIENT}, for="10.1.1.1:80"x',
        f"for={CLIENT}, for=10.1.1.1;for=10.2.2.2",
        "junk, for=10.9.9.9, for=10.1.1.1",
    ],
)
def test_a_malformed_forwarded_element_the_walk_reads_is_a_marked_peer_fallback(
    forwarded: str,
) -> None:
    assert via(PROXY, ("forwarded", forwarded), trust=TRUST_FORWARDED) == (PROXY, "peer-fallback")


def test_only_the_header_the_proxies_write_is_read() -> None:
    # Proxies writing X-Forwarded-For pass a client's own Forwarded through untouched.
    got = via(PROXY, ("x-forwarded-for", CLIENT), ("forwarded", "for=81.2.69.142"))
    assert got == (CLIENT, "x-forwarded-for")
    got = via(PROXY, ("forwarded", "for=81.2.69.142"))
    assert got == (PROXY, "peer")
    # And the other way round.
    got = via(
        PROXY,
        ("x-forwarded-for", "81.2.69.142"),
        ("forwarded", f"for={CLIENT}"),
        trust=TRUST_FORWARDED,
    )
    assert got == (CLIENT, "forwarded")


def test_a_malformed_forwarded_does_not_fall_back_to_x_forwarded_for() -> None:
    got = via(
        PROXY, ("x-forwarded-for", CLIENT), ("forwarded", "for=_hidden"), trust=TRUST_FORWARDED
    )
    assert got == (PROXY, "peer-fallback")
    # Junk left of a valid client does not make Forwarded malformed.
    got = via(
        PROXY,
        ("x-forwarded-for", "81.2.69.142"),
        ("forwarded", f"for=_x, for={CLIENT}"),
        trust=TRUST_FORWARDED,
    )
    assert got == (CLIENT, "forwarded")


def test_an_unknown_forwarding_header_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="forwarding header"):
        TrustConfig.from_strings([], [], "x-real-ip")


def test_a_trusted_proxy_without_forwarding_headers_is_the_peer_unmarked() -> None:
    # The marker means "a list was there and could not be read", not "no list".
    assert via(PROXY) == (PROXY, "peer")
    assert via(PROXY, ("host", "geopin.example"), ("x-real-ip", "81.2.69.142")) == (PROXY, "peer")


def test_header_names_in_any_case_are_read() -> None:
    headers = [(b"X-Forwarded-For", CLIENT.encode())]
    assert client_address(PROXY, headers, TRUST) == ClientAddress(
        ip_address(CLIENT), "x-forwarded-for"
    )


def test_trusted_ipv6_proxy() -> None:
    assert via("fd00::5", ("x-forwarded-for", f"{CLIENT}, fd00::6")) == (
        CLIENT,
        "x-forwarded-for",
    )


# --- CDN client headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("cf-connecting-ip", CLIENT, CLIENT),
        ("cf-connecting-ip", "2001:db8::9", "2001:db8::9"),
        ("true-client-ip", CLIENT, CLIENT),
        ("cloudfront-viewer-address", f"{CLIENT}:46532", CLIENT),
        (
            "cloudfront-viewer-address",
            "2001:db8:85a3::8a2e:370:7334:46532",
            "2001:db8:85a3::8a2e:370:7334",
        ),
    ],
)
def test_cdn_client_headers_from_a_trusted_cdn(header: str, value: str, expected: str) -> None:
    assert via(CDN, (header, value)) == (expected, header)


def test_cdn_header_preference() -> None:
    got = via(
        CDN,
        ("cloudfront-viewer-address", "81.2.69.142:1"),
        ("true-client-ip", "89.160.20.112"),
        ("cf-connecting-ip", CLIENT),
    )
    assert got == (CLIENT, "cf-connecting-ip")


@pytest.mark.parametrize(
    "pairs",
    [
        [("cf-connecting-ip", "garbage")],
        [("cf-connecting-ip", f"{CLIENT}:443")],
        [("cf-connecting-ip", CLIENT), ("cf-connecting-ip", "81.2.69.142")],
        [("cloudfront-viewer-address", CLIENT)],
        [("cloudfront-viewer-address", f"{CLIENT}:99999")],
        [("true-client-ip", "unknown")],
    ],
)
def test_malformed_cdn_headers_fall_back_to_the_peer(pairs: list[tuple[str, str]]) -> None:
    assert via(CDN, *pairs) == (CDN, "peer-fallback")


def test_a_peer_that_is_both_cdn_and_proxy_prefers_the_cdn_header() -> None:
    both = TrustConfig.from_strings(["198.51.100.0/24"], ["198.51.100.0/24"])
    pairs = [("x-forwarded-for", "81.2.69.142"), ("cf-connecting-ip", CLIENT)]
    assert via(CDN, *pairs, trust=both) == (CLIENT, "cf-connecting-ip")
    assert via(CDN, pairs[0], trust=both) == ("81.2.69.142", "x-forwarded-for")


# --- TrustConfig -------------------------------------------------------------------------


def test_trust_config_from_strings() -> None:
    trust = TrustConfig.from_strings(["10.0.0.0/8", " 192.0.2.1 ", "::ffff:172.16.0.0/108"], [])
    assert trust.trusted_proxies == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.0.2.1/32"),
        IPv4Network("172.16.0.0/12"),
    )
    assert trust.is_proxy(ip_address("172.16.3.4"))
    assert not trust.is_proxy(ip_address("172.32.0.1"))
    assert TrustConfig.from_strings([], ["2001:db8::/32"]).trusted_cdns == (
        IPv6Network("2001:db8::/32"),
    )


@pytest.mark.parametrize(
    ("proxies", "cdns", "named"),
    [
        (["10.0.0.0/8", "10.0.0.0/33"], [], "10.0.0.0/33"),
        (["10.0.0.1/8"], [], "10.0.0.1/8"),
        ([], ["cloudflare"], "cloudflare"),
        ([""], [], "''"),
    ],
)
def test_trust_config_names_the_bad_entry(proxies: list[str], cdns: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("/", "/")) as info:
        TrustConfig.from_strings(proxies, cdns)
    assert ("trusted CDNs" if cdns else "trusted proxies") in str(info.value)


def test_trust_config_is_a_value() -> None:
    assert TrustConfig.from_strings(["10.0.0.0/8"], []) == TrustConfig.from_strings(
        ["10.0.0.0/8"], []
    )
    assert hash(TrustConfig()) == hash(TrustConfig())


def test_parse_ip() -> None:
    assert parse_ip("::ffff:1.2.3.4") == ip_address("1.2.3.4")
    assert parse_ip("fe80::1%lo") == ip_address("fe80::1")
    assert parse_ip("1.2.3.4%lo") is None
    assert parse_ip("nope") is None


# --- properties --------------------------------------------------------------------------

_header_names = st.sampled_from(
    [
        b"x-forwarded-for",
        b"forwarded",
        b"cf-connecting-ip",
        b"true-client-ip",
        b"cloudfront-viewer-address",
        b"x-real-ip",
        b"host",
    ]
)
_address_text = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]:443"),
    st.ip_addresses(v=4).map(lambda ip: f"for={ip}"),
)
_header_values = st.one_of(
    st.binary(max_size=60),
    st.lists(_address_text, max_size=4).map(lambda parts: ", ".join(parts).encode()),
)
_headers = st.lists(st.tuples(_header_names, _header_values), max_size=6)
_untrusted_peers = st.ip_addresses().filter(
    lambda ip: not TRUST.is_proxy(ip) and not TRUST.is_cdn(ip)
)


@settings(max_examples=300, deadline=None)
@given(peer=_untrusted_peers, headers=_headers)
def test_property_an_untrusted_peer_is_the_client_whatever_the_headers(peer, headers) -> None:
    result = client_address(str(peer), headers, TRUST)
    assert result.via == "peer"
    assert result.ip == parse_ip(str(peer))


@settings(max_examples=300, deadline=None)
@given(headers=_headers, peer=st.sampled_from([PROXY, CDN, "fd00::1"]))
def test_property_a_trusted_peer_never_invents_an_address(peer: str, headers) -> None:
    # Whatever the headers, the answer is the peer or an address that appears in them.
    result = client_address(peer, headers, TRUST)
    assert result.ip is not None
    if result.via in ("peer", "peer-fallback"):
        assert result.ip == ip_address(peer)
    else:
        values = b" ".join(value for name, value in headers if name == result.via.encode())
        text = values.decode("latin-1").lower()
        assert (
            str(result.ip) in text or f"::ffff:{result.ip}" in text or _expanded_in(result.ip, text)
        )


def _expanded_in(ip, text: str) -> bool:
    # "::FFFF:cb00:7109" and other spellings: compare parsed tokens instead of text.
    for token in text.replace(",", " ").replace(";", " ").replace('"', " ").split():
        token = token.removeprefix("for=").strip("[]")
        for candidate in (token, token.rsplit(":", 1)[0].strip("[]")):
            if parse_ip(candidate) == ip:
                return True
    return False


_trusted_hops = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.ip_addresses(network="fd00::/8"),
    st.ip_addresses(network="198.51.100.0/24"),
    st.ip_addresses(network="2001:db8:cd::/48"),
)
_untrusted_clients = st.ip_addresses().filter(
    lambda ip: not TRUST.is_proxy(parse_ip(str(ip))) and not TRUST.is_cdn(parse_ip(str(ip)))
)
_ports = st.integers(1, 65535)
# Anything a client can put in a header value, weighted towards the characters that matter.
_client_text = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=40),
    st.text(st.sampled_from(',;="\\[]:_ \tfor=unknown10.2.3'), max_size=40),
)


def _xff_entry(ip, port: int, form: int) -> str:
    if ip.version == 4:
        return str(ip) if form % 2 else f"{ip}:{port}"
    return (str(ip), f"[{ip}]", f"[{ip}]:{port}")[form % 3]


def _forwarded_element(ip, port: int, form: int) -> str:
    if ip.version == 4:
        node = (str(ip), f'"{ip}"', f'"{ip}:{port}"')[form % 3]
    else:
        node = (f'"[{ip}]"', f'"[{ip}]:{port}"')[form % 2]
    return (f"for={node}", f"for={node};proto=https", f'host="a,b";for={node}')[form % 3]


@settings(max_examples=500, deadline=None)
@given(
    header=st.sampled_from(["x-forwarded-for", "forwarded"]),
    client=_untrusted_clients,
    proxies=st.lists(st.tuples(_trusted_hops, _ports, st.integers(0, 5)), max_size=4),
    port=_ports,
    form=st.integers(0, 5),
    prefix=st.none() | _client_text,
    separator=st.sampled_from([", ", ","]),
)
def test_property_nothing_the_client_prepends_moves_it(
    header: str, client, proxies, port: int, form: int, prefix: str | None, separator: str
) -> None:
    # Our proxies appended the client's address and then their own hops; the client wrote
    # only what is left of its address, and however odd that is, it is ignored.
    entry = _forwarded_element if header == "forwarded" else _xff_entry
    appended = [entry(client, port, form)] + [entry(*hop) for hop in proxies]
    value = separator.join(appended if prefix is None else [prefix, *appended])
    trust = TRUST_FORWARDED if header == "forwarded" else TRUST
    result = client_address(PROXY, [(header.encode(), value.encode("latin-1"))], trust)
    assert result == ClientAddress(parse_ip(str(client)), header)
