"""geopin.audit.canonical: RFC 8785 style canonical JSON for audit records."""

from __future__ import annotations

import json
from collections import OrderedDict
from enum import IntEnum, StrEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.audit import canonical
from geopin.audit.canonical import MAX_SAFE_INTEGER, canonical_json


def test_no_whitespace_and_sorted_keys_at_every_depth():
    value = {"z": {"z": 1, "a": [2, {"y": None, "b": True}]}, "a": False, "m": "x"}
    assert canonical_json(value) == b'{"a":false,"m":"x","z":{"a":[2,{"b":true,"y":null}],"z":1}}'


def test_empty_structures_and_literals():
    assert canonical_json({"obj": {}, "arr": []}) == b'{"arr":[],"obj":{}}'
    assert canonical_json([None, True, False, 0, -1, 42]) == b"[null,true,false,0,-1,42]"
    assert canonical_json("") == b'""'


def test_rfc8785_property_sorting_vector():
    # RFC 8785 section 3.2.3 and the JCS reference test data
    # (github.com/cyberphone/json-canonicalization, testdata/input/weird.json and
    # testdata/output/weird.json): keys sort by UTF-16 code units, so the emoji (surrogates
    # D83D DE02) sorts BEFORE U+FB33 although its code point is larger.
    source = (
        '{"\\u20ac": "Euro Sign", "1": "One", "\\u0080": "Control\\u007f",'
        ' "\\ud83d\\ude02": "Smiley", "\\u00f6": "Latin Small Letter O With Diaeresis",'
        ' "\\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}'
    )
    expected = (
        '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f602":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_utf16_order_differs_from_code_point_order():
    keys = ["\ufb33", "\U0001f602", "\uffff", "\U00010000", "a"]
    out = canonical_json(dict.fromkeys(keys, 0)).decode("utf-8")
    assert out == '{"a":0,"\U00010000":0,"\U0001f602":0,"\ufb33":0,"\uffff":0}'
    # Sorting by code point would put both astral characters last.
    assert sorted(keys) != ["a", "\U00010000", "\U0001f602", "\ufb33", "\uffff"]


def test_insertion_order_does_not_matter():
    a = OrderedDict([("b", 1), ("a", 2)])
    b = {"a": 2, "b": 1}
    assert canonical_json(a) == canonical_json(b) == b'{"a":2,"b":1}'


def test_string_escaping_follows_rfc8785():
    # RFC 8785 section 3.2.2.2: short escapes where JSON has them, \u00xx (lowercase) for the
    # other control characters, and everything else (including DEL and U+2028) as itself.
    value = "\u20ac$\u000f\nA'\u0042\"\\\u007f\u2028/\b\t\f\r\x00\x1f"
    expected = '"€$\\u000f\\nA\'B\\"\\\\\u007f\u2028/\\b\\t\\f\\r\\u0000\\u001f"'
    assert canonical_json(value) == expected.encode("utf-8")


@pytest.mark.parametrize("code", range(0x20))
def test_every_control_character_is_escaped(code):
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    want = short.get(code, f"\\u{code:04x}")
    assert canonical_json(chr(code)) == f'"{want}"'.encode()
    assert canonical_json({chr(code): 1}) == f'{{"{want}":1}}'.encode()


def test_non_ascii_is_utf8_not_escaped():
    assert canonical_json("Zürich 東京 \U0001f30d") == '"Zürich 東京 \U0001f30d"'.encode()
    # JCS testdata/output/french.json: code unit order, not French collation.
    assert canonical_json({"pêche": 1, "péché": 2, "peach": 3, "sin": 4}) == (
        '{"peach":3,"péché":2,"pêche":1,"sin":4}'.encode()
    )


def test_unnormalized_unicode_is_kept_as_is():
    # Canonicalisation must not normalise (JCS testdata/input/unicode.json).
    assert canonical_json({"u": "\u1e0d\u0307"}) == '{"u":"\u1e0d\u0307"}'.encode()


def test_enum_members_are_written_as_their_values():
    class Action(StrEnum):
        ROUTE = "route"

    class Level(IntEnum):
        HIGH = 3

    assert canonical_json({Action.ROUTE: [Action.ROUTE, Level.HIGH]}) == b'{"route":["route",3]}'


def test_integer_range_is_i_json_safe():
    assert canonical_json([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == (
        b"[9007199254740991,-9007199254740991]"
    )
    with pytest.raises(ValueError, match=r"\$\.big: integer 9007199254740992"):
        canonical_json({"big": MAX_SAFE_INTEGER + 1})
    with pytest.raises(ValueError, match="outside the I-JSON range"):
        canonical_json([-(2**64)])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, r"\$: float 1.5 is not allowed"),
        (1.0, "float"),
        (float("nan"), "float nan"),
        (float("inf"), "float inf"),
        ({"latency": 0.25}, r"\$\.latency: float"),
        ([1, [2, 3.0]], r"\$\[1\]\[1\]: float"),
        (b"raw", r"\$: bytes is not a canonical JSON type"),
        ({"ids": {1, 2}}, r"\$\.ids: set"),
        (frozenset(), "frozenset"),
        (("a", "b"), "tuple"),
        ({1: "a"}, "object key 1 is int, not str"),
        ({None: "a"}, "object key None"),
        (object(), "object is not a canonical JSON type"),
    ],
)
def test_rejected_types(value, message):
    with pytest.raises(TypeError, match=message):
        canonical_json(value)


def test_lone_surrogate_is_rejected():
    with pytest.raises(ValueError, match="lone surrogate"):
        canonical_json({"k": "\ud800"})


def test_output_is_valid_json_equal_to_input():
    value = {"kind": "decision", "v": 1, "rules": ["eu-only", "de-health"], "ok": True, "n": None}
    assert json.loads(canonical_json(value)) == value


_keys = st.text(max_size=8)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.text(),  # hypothesis text() has no lone surrogates; control characters are included
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300)
@given(_json_values)
def test_canonical_form_is_a_fixed_point(value):
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once
    assert json.loads(once) == value


class _Tier(StrEnum):
    EDGE = "edge"


def _reference(value: object) -> bytes:
    """The pure-Python encoder alone, which the C fast path must match byte for byte."""
    return canonical._encode(value).encode("utf-8")


# ASCII keys, and strings dense in what needs escaping, so the fast path is really exercised.
_ascii_keys = st.text(st.characters(max_codepoint=0x7F), max_size=8)
_tricky_text = st.text(
    st.one_of(
        st.characters(max_codepoint=0x7F),
        st.sampled_from(["\u2028", "\u2029", "\x7f", "\u00e9", "\U0001f600", "\ufeff"]),
    )
)
_plain_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
        _tricky_text,
    ),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(_ascii_keys, children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=400)
@given(_plain_values)
def test_fast_path_is_taken_and_agrees_with_the_reference_encoder(value):
    assert canonical._plain(value)
    assert canonical_json(value) == _reference(value)


@settings(max_examples=300)
@given(_json_values)
def test_every_value_encodes_as_the_reference_encoder_does(value):
    # Non-ASCII keys leave the fast path (UTF-16 order); the result is the same bytes.
    assert canonical_json(value) == _reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {"k": 1.0},
        {"k": (1, 2)},
        {"k": 2**53},
        {1: "x"},
        {"\u00e9": 1},
        {"k": _Tier.EDGE},
        [b"x"],
        {"k": {"deep": [1, 2.5]}},
    ],
)
def test_values_outside_the_plain_types_leave_the_fast_path(value):
    assert not canonical._plain(value)


@settings(max_examples=200)
@given(st.dictionaries(_keys, _scalars, max_size=8), st.randoms(use_true_random=False))
def test_key_order_of_input_is_irrelevant(value, rnd):
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


@settings(max_examples=200)
@given(st.dictionaries(_keys, st.integers(0, 9), min_size=2, max_size=8))
def test_keys_come_out_in_utf16_order(value):
    parsed = json.loads(canonical_json(value), object_pairs_hook=lambda pairs: pairs)
    keys = [k for k, _ in parsed]
    assert keys == sorted(value, key=lambda k: [ord(u) for u in _utf16(k)])


def _utf16(key: str) -> list[str]:
    # Split astral characters into their surrogate pair, as a JavaScript string holds them.
    units = []
    for ch in key:
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            units += [chr(0xD800 + (cp >> 10)), chr(0xDC00 + (cp & 0x3FF))]
        else:
            units.append(ch)
    return units
