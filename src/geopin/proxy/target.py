"""The request target as geopin forwards it: the client's path and query, checked and in
RFC 3986's normal form, never the server's percent-decoded ``scope["path"]``.

An ASGI server hands the application the path percent-decoded, so a client's ``%0D%0A``
would arrive as a line break and ``%2F..%2F`` as a step up the tree. geopin takes the path as
it was sent (``raw_path``), decodes only what RFC 3986 section 6.2.2.2 says is safe to decode
(the unreserved characters, so ``/v1/m%65ssages`` is ``/v1/messages`` both to geopin and to
the upstream), and refuses the rest of the tricks outright: a byte outside RFC 3986's path or
query characters, a malformed escape, an escaped control character, an escaped ``/`` or
``\\`` in the path, and ``.`` or ``..`` segments. No model API needs any of them, and each is
a way to make the upstream see another path (or another request) than the one geopin
decided on.
"""

from __future__ import annotations

from urllib.parse import quote

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_PCHAR = _UNRESERVED + b"!$&'()*+,;=:@"
_PATH_CHARS = _PCHAR + b"/%"
_QUERY_CHARS = _PCHAR + b"/?%"
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_UNRESERVED_SET = frozenset(_UNRESERVED)
_NEVER_ESCAPED_IN_PATH = frozenset(b"/\\")  # an escaped separator changes the tree's shape
_SAFE_FOR_QUOTE = "/!$&'()*+,;=:@"


def request_path(scope: dict) -> str | None:
    """The request's path in normal form, or None when geopin must not forward it."""
    raw = scope.get("raw_path")
    if raw is None:  # raw_path is optional in ASGI; re-encode what the server decoded
        raw = quote(scope["path"], safe=_SAFE_FOR_QUOTE).encode("ascii")
    path = _normalise(raw, _PATH_CHARS, _NEVER_ESCAPED_IN_PATH)
    if path is None or not path.startswith("/"):
        return None
    if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
        return None
    return path


def request_query(scope: dict) -> str | None:
    """The request's query string in normal form ('' for none), or None when it is refused."""
    raw = scope.get("query_string", b"")
    return _normalise(raw, _QUERY_CHARS, frozenset()) if raw else ""


def shown_path(scope: dict) -> str:
    """The path as sent, safe to put in a log line or a message whatever it holds."""
    raw = scope.get("raw_path")
    if raw is None:
        return scope["path"].encode("unicode_escape").decode("ascii")
    return raw.decode("ascii", "backslashreplace")


def _normalise(raw: bytes, allowed: bytes, never_escaped: frozenset[int]) -> str | None:
    if raw.translate(None, allowed):  # what is left is a byte outside the allowed set
        return None
    if b"%" not in raw:
        return raw.decode("ascii")
    first, *escaped = raw.split(b"%")
    out = [first.decode("ascii")]
    for part in escaped:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            return None
        byte = int(part[:2], 16)
        if byte < 0x20 or byte == 0x7F or byte in never_escaped:
            return None
        if byte in _UNRESERVED_SET:
            out.append(chr(byte))
        else:
            out.append("%" + part[:2].decode("ascii").upper())
        out.append(part[2:].decode("ascii"))
    return "".join(out)
