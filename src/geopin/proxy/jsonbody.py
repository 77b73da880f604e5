"""A client's JSON body, parsed so that the model geopin decides on is the one the upstream reads.

RFC 8259 leaves a JSON object that names a key twice to each parser: Python's ``json`` keeps
the last value, others keep the first or refuse it. geopin decides on the body's ``model`` and
then forwards the body as it came, so ``{"model": "a", "model": "b"}`` could be decided as one
model and run as the other. A body whose top-level object names ``model`` more than once is
therefore refused (:class:`DuplicateKey`); anything else is read as ``json.loads`` reads it
(geopin decides on nothing else the body holds).

The top-level object's members are read by the ``json`` module's own object parser, each
value by its C scanner: 5% more than ``json.loads`` for 60 KB, but 3 µs more for a small body
(``timeit``). So a small UTF-8 body is first searched for what a second key spelling ``model``
would need, the bytes ``"model"`` twice or a ``\\u`` escape, and ``json.loads``'d when it has
neither; on a large body that search costs more than it saves (about 100 µs for 60 KB).
"""

from __future__ import annotations

import json
from json.decoder import WHITESPACE, JSONObject  # type: ignore[attr-defined]  # stdlib, untyped
from typing import Any

MODEL = "model"
_SEARCHED = 2048  # bytes: up to this size a body is searched before it is parsed
_DECODER = json.JSONDecoder()
_DECODE = _DECODER.decode  # what json.loads uses, called without its checks
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # the C scanner


class DuplicateKey(ValueError):
    """The body's top-level object names ``key`` more than once."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the top-level object names {key!r} more than once")
        self.key = key


def parse_json(raw: bytes) -> Any:
    """``json.loads(raw)``, except that a top-level object naming ``model`` twice raises
    :class:`DuplicateKey`. Invalid JSON raises ``json.JSONDecodeError`` as ``json.loads`` does."""
    # An object's "{" and a non-zero byte after it: UTF-8 to json.detect_encoding (no byte
    # order mark starts so, and UTF-16 or -32 would put a zero next), told without the call.
    utf8 = raw[:1] == b"{" and raw[1:2] != b"\x00"
    encoding = "utf-8" if utf8 else json.detect_encoding(raw)
    text = raw.decode(encoding, "surrogatepass")  # as json.loads decodes bytes
    if (
        len(raw) <= _SEARCHED
        and encoding.startswith("utf-8")
        and raw.count(b'"model"') < 2
        and b"\\u" not in raw
    ):
        return _DECODE(text)  # json.loads(raw): no second key can spell "model"
    start = WHITESPACE.match(text, 0).end()
    if not text.startswith("{", start):
        return json.loads(text)  # not an object: nothing is named at its top
    pairs, end = JSONObject((text, start + 1), True, _SCAN, None, _keep_pairs)
    end = WHITESPACE.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    if sum(1 for key, _ in pairs if key == MODEL) > 1:
        raise DuplicateKey(MODEL)
    return dict(pairs)


def _keep_pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs
