"""Canonical JSON for audit records, in the manner of RFC 8785 (JCS).

A record's leaf hash is computed over these bytes, so two writers (or a verifier years later)
must produce the same bytes for the same value. The output is RFC 8785 for the subset of JSON
that audit records use:

- object keys sorted by their UTF-16 code units (RFC 8785 section 3.2.3), so a key with a
  character outside the Basic Multilingual Plane sorts by its surrogates, as JavaScript does;
- no insignificant whitespace, UTF-8 output;
- strings escaped as RFC 8785 section 3.2.2.2 says: ``\\"``, ``\\\\``, the short forms
  ``\\b \\t \\n \\f \\r``, any other control character as ``\\u00xx`` (lowercase hex), everything
  else (DEL, U+2028, non-ASCII) written as itself;
- integers only. Floats are refused (``TypeError``) because their shortest round-trip form is
  exactly where implementations disagree; records store durations as integer microseconds.

Accepted types are ``dict`` (``str`` keys), ``list``, ``str``, ``int``, ``bool`` and ``None``;
subclasses of ``str`` and ``int`` (such as ``StrEnum`` members) are written as their plain value.
Anything else (float, bytes, set, tuple, ...) raises ``TypeError``. Two value errors are
``ValueError``: an integer outside the I-JSON safe range ``±(2**53 - 1)`` (RFC 7493 section 2.2,
which RFC 8785 requires; a JavaScript verifier would silently round it) and a string holding a
lone surrogate (it has no UTF-8 encoding).

Every audit record passes through here on the request path, so a value made only of the plain
types (exactly ``dict`` with ASCII ``str`` keys, ``list``, ``str``, ``int`` in range, ``bool``,
``None``), which is what records are, is written by the standard library's C encoder: for
those types its output (sorted keys, ``ensure_ascii=False``, compact separators) is the
canonical form byte for byte, since ASCII keys sort the same by code point and by UTF-16
unit, and its string escapes are the ones above. Anything else takes the encoder below, which
also gives the errors. ``tests/audit/test_canonical.py`` checks that both agree on every value.
"""

from __future__ import annotations

import json.encoder
import re
from typing import Any

__all__ = ["MAX_SAFE_INTEGER", "canonical_json", "canonical_text", "utf8"]

MAX_SAFE_INTEGER = 2**53 - 1

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _string(value: str) -> str:
    if type(value) is not str:
        # A subclass (StrEnum) may override __format__ or __str__; write the plain value.
        value = str.__str__(value)
    # The common case (identifiers, country codes, times) has nothing to escape.
    if _NEEDS_ESCAPE.search(value) is None:
        return f'"{value}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, value) + '"'


def _utf16_units(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the sequence of code units.
    return key.encode("utf-16-be", "surrogatepass")


class _Rejected(Exception):
    """A value that has no canonical form; ``path`` is filled in on the way out."""

    def __init__(self, error: type[Exception], message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message
        self.path: list[str] = []


def _encode(value: object) -> str:
    # bool before int: True is an int in Python but a literal in JSON.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _Rejected(ValueError, f"integer {value} is outside the I-JSON range ±(2**53-1)")
        return int.__repr__(value)
    if isinstance(value, dict):
        return _encode_object(value)
    if isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_encode(item))
            except _Rejected as exc:
                exc.path.append(f"[{i}]")
                raise
        return "[" + ",".join(items) + "]"
    if isinstance(value, float):
        raise _Rejected(TypeError, f"float {value!r} is not allowed; use an integer unit")
    raise _Rejected(TypeError, f"{type(value).__name__} is not a canonical JSON type")


def _encode_object(value: dict) -> str:
    for key in value:
        if not isinstance(key, str):
            raise _Rejected(TypeError, f"object key {key!r} is {type(key).__name__}, not str")
    # For ASCII keys code point order is UTF-16 order; skip the re-encoding then.
    if all(key.isascii() for key in value):
        keys = sorted(value)
    else:
        keys = sorted(value, key=_utf16_units)
    members = []
    for key in keys:
        try:
            members.append(_string(key) + ":" + _encode(value[key]))
        except _Rejected as exc:
            exc.path.append(f".{key}")
            raise
    return "{" + ",".join(members) + "}"


_LEAVES = frozenset({str, bool, type(None)})


def _plain(value: object) -> bool:
    """True when ``value`` holds only the types the C encoder writes canonically.

    Leaves are checked in the loop (a call per leaf would cost as much as the encoding)."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()  # type: ignore[attr-defined]
        for key in value:  # type: ignore[attr-defined]
            if type(key) is not str or not key.isascii():
                return False
    elif kind is list:
        items = value
    else:
        return _plain_leaf(value)
    for item in items:
        leaf = type(item)
        if leaf in _LEAVES:
            continue
        if leaf is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif not _plain(item):
            return False
    return True


def _plain_leaf(value: object) -> bool:
    kind = type(value)
    if kind in _LEAVES:
        return True
    return kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER  # type: ignore[operator]


# Sorted keys, no whitespace, strings escaped as RFC 8785 says (not as ASCII), no NaN.
_c_encode = getattr(json.encoder, "c_make_encoder", None)
_fast = (
    _c_encode(None, None, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    if _c_encode is not None
    else None
)


def canonical_json(obj: object) -> bytes:
    """The canonical UTF-8 JSON encoding of ``obj`` (see the module docstring for the rules)."""
    return utf8(canonical_text(obj))


def canonical_text(obj: object) -> str:
    """The canonical JSON of ``obj`` as text, before its UTF-8 encoding."""
    if _fast is not None and _plain(obj):
        return "".join(_fast(obj, 0))
    try:
        return _encode(obj)
    except _Rejected as exc:
        where = "$" + "".join(reversed(exc.path))
        raise exc.error(f"{where}: {exc.message}") from None


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; ValueError for a lone surrogate, which has no UTF-8 form."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise ValueError(f"string holds a lone surrogate {bad!r}; it has no UTF-8 form") from exc
