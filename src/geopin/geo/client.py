"""The client's address: the socket peer, or what trusted proxies and CDNs say it is.

Forwarding headers are written by whoever sent the request, so they are read only when the
socket peer is one the operator trusts: ``X-Forwarded-For`` and ``Forwarded`` from a peer in
``trusted_proxies``, the CDN's own client-address headers from a peer in ``trusted_cdns``.
From anyone else the headers are ignored.

A forwarding list is walked from the right (rightmost-untrusted). Each hop appends on the
right, so while the walk passes hops in either trust list it reads only what our own proxies
wrote (a CDN edge our proxy reports is as trustworthy as the proxy itself), and the first
untrusted entry is the client. Everything left of it is the client's own text: it is never
parsed, so junk, ``unknown``, ``_hidden`` or an unterminated quote there change nothing.
``Forwarded`` elements are split on commas outside quoted strings, scanning leftwards, so a
quote the client opens cannot swallow the elements our proxies appended after it. When every
entry is trusted, the leftmost is the best there is.

Only an entry the walk has to read can make it fail: the client's slot or a hop on the way,
both written by our own proxies. Then the result is the peer, never a guess, marked
``via="peer-fallback"`` so callers can tell it from a direct connection. The client cannot
provoke this, nor steer where it is located: it controls only what is left of the first
untrusted entry, which the walk never reaches. (Rejecting the whole list for a bad entry
anywhere would let a client that writes junk on its own left be located wherever our proxy
stands.) Only the one header the operator's proxies write (``forwarding_header``,
``X-Forwarded-For`` by default, or ``Forwarded``) is read: the other reaches us exactly as the
client wrote it. A malformed CDN client-address header is a fallback to the peer too.

Called on every request: the untrusted-peer path does one cached parse and one range check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from geopin.errors import ConfigError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

VIA_PEER = "peer"
# The peer, because a forwarding entry the walk had to read was malformed.
VIA_PEER_FALLBACK = "peer-fallback"
VIA_FORWARDED = "forwarded"
VIA_X_FORWARDED_FOR = "x-forwarded-for"
FORWARDING_HEADERS = (VIA_X_FORWARDED_FOR, VIA_FORWARDED)
# Single-address headers set by the CDN itself, in order of preference.
CDN_ADDRESS_HEADERS = ("cf-connecting-ip", "true-client-ip", "cloudfront-viewer-address")

_FORWARDED = b"forwarded"
_X_FORWARDED_FOR = b"x-forwarded-for"
_CDN_HEADER_BYTES = tuple(name.encode() for name in CDN_ADDRESS_HEADERS)
_READ_HEADERS = frozenset((_FORWARDED, _X_FORWARDED_FOR, *_CDN_HEADER_BYTES))
_MAPPED = IPv6Network("::ffff:0:0/96")
_OBFUSCATED_PORT_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
)


class _Ranges:
    """Networks as integer intervals per IP version: a membership test without allocation."""

    __slots__ = ("v4", "v6")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for network in networks:
            bounds = (int(network.network_address), int(network.broadcast_address))
            (v4 if network.version == 4 else v6).append(bounds)
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def __contains__(self, ip: IPAddress) -> bool:
        n = int(ip)
        for low, high in self.v4 if ip.version == 4 else self.v6:
            if low <= n <= high:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """The proxies whose forwarding headers, and the CDNs whose client headers, are believed."""

    trusted_proxies: tuple[IPNetwork, ...] = ()
    trusted_cdns: tuple[IPNetwork, ...] = ()
    # The one forwarding header the trusted proxies write. Only it is read: a header they do
    # not write reaches us as the client sent it, so reading it would let the client choose.
    forwarding_header: str = VIA_X_FORWARDED_FOR
    _proxies: _Ranges = field(init=False, repr=False, compare=False)
    _cdns: _Ranges = field(init=False, repr=False, compare=False)
    # A hop in a forwarding chain is skipped when it is a trusted proxy or a trusted CDN.
    _hops: _Ranges = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.forwarding_header not in FORWARDING_HEADERS:
            raise ConfigError(
                f"forwarding header: {self.forwarding_header!r} is not one of "
                + ", ".join(FORWARDING_HEADERS)
            )
        object.__setattr__(self, "_proxies", _Ranges(self.trusted_proxies))
        object.__setattr__(self, "_cdns", _Ranges(self.trusted_cdns))
        object.__setattr__(self, "_hops", _Ranges((*self.trusted_proxies, *self.trusted_cdns)))

    @classmethod
    def from_strings(
        cls,
        proxies: Iterable[str],
        cdns: Iterable[str],
        forwarding_header: str = VIA_X_FORWARDED_FOR,
    ) -> TrustConfig:
        """Parse CIDR ranges or single addresses; ConfigError names the first bad entry."""
        return cls(
            trusted_proxies=tuple(_network(entry, "trusted proxies") for entry in proxies),
            trusted_cdns=tuple(_network(entry, "trusted CDNs") for entry in cdns),
            forwarding_header=forwarding_header,
        )

    def is_proxy(self, ip: IPAddress) -> bool:
        return ip in self._proxies

    def is_cdn(self, ip: IPAddress) -> bool:
        return ip in self._cdns


def _network(entry: str, what: str) -> IPNetwork:
    text = entry.strip() if isinstance(entry, str) else entry
    try:
        network = ip_network(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {entry!r} is not an IP network ({exc})") from exc
    if network.version == 6 and network.subnet_of(_MAPPED) and network.prefixlen >= 96:
        # Peers are normalised to IPv4, so a mapped range must be too, or it never matches.
        network = IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The client's address and the header it came from.

    ``"peer"`` for the socket, ``"peer-fallback"`` for the socket after a trusted proxy's
    forwarding list could not be read.
    """

    ip: IPAddress | None
    via: str


_NO_ADDRESS = ClientAddress(None, VIA_PEER)


def client_address(
    peer: str | None, headers: Sequence[tuple[bytes, bytes]], trust: TrustConfig
) -> ClientAddress:
    """The client's address for a request from ``peer`` with ASGI raw ``headers``.

    A malformed header from a trusted peer yields the peer itself: never a guess. For a
    forwarding list that is marked ``"peer-fallback"``; see the module docstring.
    """
    return resolve_client(peer, headers, trust)[0]


def resolve_client(
    peer: str | None, headers: Sequence[tuple[bytes, bytes]], trust: TrustConfig
) -> tuple[ClientAddress, IPAddress | None]:
    """:func:`client_address`, plus the socket peer's address when it is a trusted CDN."""
    if peer is None:
        return _NO_ADDRESS, None
    address = _peer_address(peer)
    ip = address.ip
    if ip is None or not trust._hops or ip not in trust._hops:
        return address, None
    is_cdn = ip in trust._cdns
    is_proxy = ip in trust._proxies
    return _from_headers(address, headers, trust, is_cdn, is_proxy), ip if is_cdn else None


@lru_cache(maxsize=16384)
def _peer_address(peer: str) -> ClientAddress:
    # Peers repeat (pools, keep-alive, NAT), and parsing an address costs microseconds.
    text = peer.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = parse_ip(text)
    return ClientAddress(ip, VIA_PEER) if ip is not None else _NO_ADDRESS


def parse_ip(text: str) -> IPAddress | None:
    """An address without port or brackets; IPv4-mapped IPv6 becomes IPv4, zone ids go."""
    if ":" in text:
        text, percent, zone = text.partition("%")
        if percent and not zone:
            return None
    try:
        ip = ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _from_headers(
    peer: ClientAddress,
    headers: Sequence[tuple[bytes, bytes]],
    trust: TrustConfig,
    is_cdn: bool,
    is_proxy: bool,
) -> ClientAddress:
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        name = name.lower()
        if name in _READ_HEADERS:
            seen.setdefault(name, []).append(value)
    if is_cdn:
        for header, raw in zip(CDN_ADDRESS_HEADERS, _CDN_HEADER_BYTES, strict=True):
            values = seen.get(raw)
            if values is None:
                continue
            # The CDN sets exactly one; two means the request is not what the CDN sent.
            ip = _cdn_address(raw, values[0]) if len(values) == 1 else None
            if ip is None:
                return ClientAddress(peer.ip, VIA_PEER_FALLBACK)
            return ClientAddress(ip, header)
    if is_proxy:
        via = trust.forwarding_header
        if via == VIA_FORWARDED and _FORWARDED in seen:
            ip = _walk_forwarded(_joined(seen[_FORWARDED]), trust._hops)
        elif via == VIA_X_FORWARDED_FOR and _X_FORWARDED_FOR in seen:
            ip = _walk_x_forwarded_for(_joined(seen[_X_FORWARDED_FOR]), trust._hops)
        else:
            return peer
        if ip is None:
            return ClientAddress(peer.ip, VIA_PEER_FALLBACK)
        return ClientAddress(ip, via)
    return peer


def _joined(values: list[bytes]) -> str:
    # Several header lines form one list, in order (RFC 9110 section 5.3).
    return ", ".join(value.decode("latin-1") for value in values)


def _walk_x_forwarded_for(value: str, hops: _Ranges) -> IPAddress | None:
    """The rightmost untrusted entry, the leftmost if all are trusted; None if one read is bad."""
    end = len(value)
    while True:
        start, ip = _x_forwarded_for_step(value, end)
        if ip is None or start == 0 or ip not in hops:
            return ip
        end = start - 1


def _walk_forwarded(value: str, hops: _Ranges) -> IPAddress | None:
    """:func:`_walk_x_forwarded_for` over ``Forwarded`` elements."""
    end = len(value)
    while True:
        start, ip = _forwarded_step(value, end)
        if ip is None or start == 0 or ip not in hops:
            return ip
        end = start - 1


# Header values repeat per client behind the same proxies; caching spares the scan and the
# parse. Only entries the walk reads are looked at, and those our own proxies wrote.
@lru_cache(maxsize=4096)
def _x_forwarded_for_step(value: str, end: int) -> tuple[int, IPAddress | None]:
    """Where the entry ending at ``end`` starts, and its address (None when malformed)."""
    start = value.rfind(",", 0, end) + 1
    return start, _node(value[start:end].strip(), bracketed_ipv6_only=False)


@lru_cache(maxsize=4096)
def _forwarded_step(value: str, end: int) -> tuple[int, IPAddress | None]:
    """Where the element ending at ``end`` starts, and its address (None when malformed)."""
    start = _element_start(value, end)
    if start is None:
        return 0, None
    nodes = _forwarded_for_values(value[start:end])
    if nodes is None or len(nodes) != 1:
        return start, None
    return start, _node(nodes[0], bracketed_ipv6_only=True)


def _element_start(value: str, end: int) -> int | None:
    """Where the element ending at ``end`` starts: after the nearest comma outside quotes.

    Scanned leftwards, so only this element is looked at: a well-formed element is delimited
    the same whatever precedes it. None when a closing quote has no opening one.
    """
    i = end
    while True:
        comma = value.rfind(",", 0, i)
        quote = value.rfind('"', 0, i)
        if quote <= comma:
            return comma + 1
        # A closing quote: its opening quote is the nearest one not escaped by a backslash.
        while True:
            quote = value.rfind('"', 0, quote)
            if quote < 0:
                return None
            backslash = quote
            while backslash > 0 and value[backslash - 1] == "\\":
                backslash -= 1
            if (quote - backslash) % 2 == 0:
                break
        i = quote


def _cdn_address(name: bytes, value: bytes) -> IPAddress | None:
    text = value.decode("latin-1").strip()
    if name == b"cloudfront-viewer-address":
        # "IP:port", IPv6 unbracketed: the port is after the last colon.
        host, sep, port = text.rpartition(":")
        if not sep or not _valid_port(port):
            return None
        text = host
    return parse_ip(text)


def _node(text: str, *, bracketed_ipv6_only: bool) -> IPAddress | None:
    """One hop: ``1.2.3.4``, ``1.2.3.4:80``, ``[v6]``, ``[v6]:80``, and bare ``v6`` in XFF.

    ``unknown`` and obfuscated ``_names`` are not addresses: where the walk reads one, it stops.
    """
    if not text:
        return None
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if rest and (rest[0] != ":" or not _valid_port(rest[1:], obfuscated=bracketed_ipv6_only)):
            return None
        if ":" not in host:
            return None
        return parse_ip(host)
    colons = text.count(":")
    if colons == 1:
        host, port = text.split(":")
        if not _valid_port(port, obfuscated=bracketed_ipv6_only) or "." not in host:
            return None
        text = host
    elif colons > 1 and bracketed_ipv6_only:
        return None  # RFC 7239 requires IPv6 in brackets
    if "]" in text:
        return None
    return parse_ip(text)


def _valid_port(port: str, *, obfuscated: bool = False) -> bool:
    if obfuscated and len(port) > 1 and port[0] == "_":
        return all(char in _OBFUSCATED_PORT_CHARS for char in port)
    return 0 < len(port) <= 5 and port.isascii() and port.isdigit() and 0 < int(port) <= 65535


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VALUE_END = frozenset(" \t;,")


def _forwarded_for_values(value: str) -> list[str] | None:
    """The ``for`` parameter of every element of a Forwarded list, or None when malformed.

    Every element must carry exactly one ``for``: a hop without one breaks the chain.
    """
    result: list[str] = []
    i, n = 0, len(value)
    while True:
        params: dict[str, str] = {}
        while True:
            i = _skip_space(value, i)
            start = i
            while i < n and value[i] in _TCHARS:
                i += 1
            name = value[start:i].lower()
            if not name or i >= n or value[i] != "=":
                return None
            i += 1
            if i < n and value[i] == '"':
                parsed = _quoted(value, i)
                if parsed is None:
                    return None
                param, i = parsed
            else:
                start = i
                while i < n and value[i] not in _VALUE_END and value[i] != '"':
                    i += 1
                param = value[start:i]
                if not param:
                    return None
            if name in params:
                return None
            params[name] = param
            i = _skip_space(value, i)
            if i < n and value[i] == ";":
                i += 1
                continue
            break
        if "for" not in params:
            return None
        result.append(params["for"])
        if i == n:
            return result
        if value[i] != ",":
            return None
        i += 1


def _skip_space(value: str, i: int) -> int:
    while i < len(value) and value[i] in " \t":
        i += 1
    return i


def _quoted(value: str, i: int) -> tuple[str, int] | None:
    """A quoted-string starting at ``value[i] == '"'``: its content and the index after it."""
    chars = []
    i += 1
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 >= len(value):
                return None
            chars.append(value[i + 1])
            i += 2
        elif char == '"':
            return "".join(chars), i + 1
        else:
            chars.append(char)
            i += 1
    return None
