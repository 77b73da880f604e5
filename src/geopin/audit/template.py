"""Record templates: the canonical JSON of records that share most of their fields.

The request path writes two records per request, and most of what they hold is the same from
one request to the next: a decision record's rules, permitted places, candidates, reason and
policy version depend only on the (memoised, immutable) decision and the endpoint chosen. A
:class:`RecordTemplate` encodes those fixed members once, in canonical key order, leaving a slot
for each field that varies; rendering a record then encodes only the values that vary and
joins them into the ready text. The bytes are exactly ``canonical_json`` of the whole record
(``tests/audit/test_template.py`` holds the two equal for any split and any values).
"""

from __future__ import annotations

import json.encoder
from collections.abc import Iterable, Mapping
from typing import Any

from geopin.audit.canonical import MAX_SAFE_INTEGER, canonical_text, utf8

_escape = json.encoder.encode_basestring  # what the C encoder writes for a str: RFC 8785 form


def _text(value: Any) -> str:
    """The canonical JSON text of one value (the plain types inline, the rest by the encoder)."""
    kind = type(value)
    if kind is str:
        return _escape(value)
    if value is None:
        return "null"
    if kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return int.__repr__(value)
    return canonical_text(value)  # bool, list, dict, subclasses; and every error


def _sort_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")  # RFC 8785: by UTF-16 code units


class RecordTemplate:
    """``fixed`` members encoded once; ``variable`` keys filled in by :meth:`render`."""

    __slots__ = ("variable", "_parts", "_slots")

    def __init__(self, fixed: Mapping[str, Any], variable: Iterable[str]) -> None:
        variable = list(variable)
        for key in [*fixed, *variable]:
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is {type(key).__name__}, not str")
        overlap = set(fixed) & set(variable)
        if overlap:
            raise ValueError(f"keys both fixed and variable: {sorted(overlap)}")
        # Literal text and slots, alternating: a slot's text is put in place at render time.
        parts: list[str] = []
        slots: list[tuple[int, str]] = []
        literal = "{"
        for i, key in enumerate(sorted([*fixed, *variable], key=_sort_key)):
            literal += ("," if i else "") + _escape(key) + ":"
            if key in fixed:
                literal += canonical_text(fixed[key])
            else:
                parts.append(literal)
                slots.append((len(parts), key))
                parts.append("")
                literal = ""
        parts.append(literal + "}")
        self._parts = parts
        self._slots = tuple(slots)
        self.variable = tuple(key for _, key in slots)

    def render(self, values: Mapping[str, Any]) -> bytes:
        """The canonical JSON of ``{**fixed, **values}``; ``values`` holds every variable key
        (others are ignored). Raises TypeError or ValueError as ``canonical_json`` does."""
        parts = self._parts.copy()
        try:
            for i, key in self._slots:
                value = values[key]
                if type(value) is str:
                    parts[i] = _escape(value)
                elif value is None:
                    parts[i] = "null"
                else:
                    parts[i] = _text(value)
        except (TypeError, ValueError) as exc:
            where = str(exc).removeprefix("$")
            raise type(exc)(f"$.{key}{where}") from None
        return utf8("".join(parts))
