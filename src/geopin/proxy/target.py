"""The request target as geopin forwards it: the client's path and query, checked and in
RFC 3986's normal form, never the server's percent-decoded ``scope["path"]``.

An ASGI server hands the application the path percent-decoded, so a client's ``%0D%0A``
would arrive as a line break and ``%2F..%2F`` as a step up the tree. geopin takes the path as
it was sent (``raw_path``), decodes only what RFC 3986 section 6.2.2.2 says is safe to decode
(the unreserved characters, so ``/v1/m%65ssages`` is ``/v1/messages`` both to geopin and to
the upstream), and refuses the rest of the tricks outright: a byte outside RFC 3986's path or
query characters, a malformed escape, an escaped control character, an escaped ``/`` or
``\\`` in the path, ``.`` or ``..`` segments, and empty ones (``//``, which many servers merge
into one ``/``). No model API needs any of them, and each is a way to make the upstream see
another path (or another request) than the one geopin decided on.
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


class BadTarget(ValueError):
    """A request target geopin does not forward; the message says what is wrong and where."""


def request_target(scope: dict) -> tuple[str, str]:
    """The request's path and query string ('' for none), each in normal form.

    Raises :class:`BadTarget` (the first problem found, with its offset in the target as
    sent) for a target geopin must not forward.
    """
    return request_path(scope), request_query(scope)


def request_path(scope: dict) -> str:
    """The request's path in normal form; raises :class:`BadTarget`."""
    raw = scope.get("raw_path")
    if raw is None:  # raw_path is optional in ASGI; re-encode what the server decoded
        raw = quote(scope["path"], safe=_SAFE_FOR_QUOTE).encode("ascii")
    path = _normalise(raw, _PATH_CHARS, _NEVER_ESCAPED_IN_PATH, "path")
    if not path.startswith("/"):
        raise BadTarget("the request's path does not begin with '/'")
    if "//" in path:
        raise BadTarget(
            f"the request's path has an empty segment ('//') at offset {raw.index(b'//')} "
            "(does the client's base URL end in '/'?)"
        )
    if "/." in path:
        for segment in path.split("/"):
            if segment in (".", ".."):
                raise BadTarget(f"the request's path has a {segment!r} segment")
    return path


def request_query(scope: dict) -> str:
    """The request's query string in normal form ('' for none); raises :class:`BadTarget`."""
    raw = scope.get("query_string", b"")
    return _normalise(raw, _QUERY_CHARS, frozenset(), "query string") if raw else ""


def shown_path(scope: dict) -> str:
    """The path as sent, safe to put in a log line or a message whatever it holds."""
    raw = scope.get("raw_path")
    if raw is None:
        return scope["path"].encode("unicode_escape").decode("ascii")
    return raw.decode("ascii", "backslashreplace")


def _normalise(raw: bytes, allowed: bytes, never_escaped: frozenset[int], part: str) -> str:
    left = raw.translate(None, allowed)
    if left:  # a byte outside the allowed set
        at = raw.index(left[:1])
        raise BadTarget(
            f"the request's {part} has {_shown(left[0])} at offset {at}, which RFC 3986 does "
            f"not allow in a {part}"
        )
    if b"%" not in raw:
        return raw.decode("ascii")
    first, *escaped = raw.split(b"%")
    out = [first.decode("ascii")]
    at = len(first)  # the offset of the escape at hand
    for chunk in escaped:
        escape = "%" + chunk[:2].decode("ascii")
        if len(chunk) < 2 or chunk[0] not in _HEX or chunk[1] not in _HEX:
            raise BadTarget(
                f"the request's {part} has a malformed escape {escape!r} at offset {at}"
            )
        byte = int(chunk[:2], 16)
        if byte < 0x20 or byte == 0x7F or byte in never_escaped:
            kind = "separator" if byte in never_escaped else "control character"
            raise BadTarget(
                f"the request's {part} has an escaped {kind} {escape.upper()!r} at offset {at}"
            )
        if byte in _UNRESERVED_SET:
            out.append(chr(byte))
        else:
            out.append(escape.upper())
        out.append(chunk[2:].decode("ascii"))
        at += 1 + len(chunk)
    return "".join(out)


def _shown(byte: int) -> str:
    """A byte of a refused target, as a message shows it."""
    if 0x20 < byte < 0x7F:
        return repr(chr(byte))
    return "a space" if byte == 0x20 else f"the byte 0x{byte:02X}"
