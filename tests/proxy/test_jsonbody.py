"""geopin.proxy.jsonbody: json.loads, except that a top-level key named twice is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.proxy.jsonbody import DuplicateKey, parse_json

_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_VALUES = st.recursive(
    _SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.booleans(), st.sampled_from([None, 2]))
def test_what_json_loads_reads_it_reads_alike(value, ascii_only, indent):
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    assert parse_json(raw) == json.loads(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=60) | st.text(alphabet='{}[]":, \\u0-9abtrue', max_size=40).map(str.encode)
)
def test_invalid_json_is_refused_where_json_loads_refuses_it(raw):
    try:
        expected = json.loads(raw)
    except ValueError:
        with pytest.raises(ValueError):
            parse_json(raw)
        return
    try:
        assert parse_json(raw) == expected
    except DuplicateKey as exc:  # the one difference: json.loads keeps the last
        assert raw.count(b'"') >= 4 and exc.key in json.loads(raw)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}', "model"),
        (b' {"model":"a","messages":[],"mod\\u0065l":"b"} ', "model"),  # the same key, escaped
        ('{"model": "a", "model": "b"}'.encode("utf-16"), "model"),  # no "model" bytes in it
    ],
)
def test_a_key_named_twice_at_the_top_level_is_refused(raw, key):
    with pytest.raises(DuplicateKey) as found:
        parse_json(raw)
    assert found.value.key == key


def test_other_keys_and_deeper_objects_are_read_as_json_loads_reads_them():
    """geopin decides on nothing else the body holds: the upstream's parser is the judge."""
    long = json.dumps("x" * 3000).encode()  # past the size that is searched before parsing
    for raw in (
        b'{"model": "a", "tools": [{"x": 1, "x": 2}], "meta": {"model": 1, "model": 2}}',
        b'{"stream": true, "model": "a", "stream": false, "mod\\u0065": 1}',
        b'{"model": "a", "input": ' + long + b', "meta": {"model": 1, "model": 2}}',
    ):
        assert parse_json(raw) == json.loads(raw)
    with pytest.raises(DuplicateKey):
        parse_json(b'{"model": "a", "input": ' + long + b', "model": "b"}')


def test_encodings_and_errors_are_json_loads_own():
    assert parse_json(b'\xef\xbb\xbf{"model": "a"}') == {"model": "a"}  # a UTF-8 BOM
    assert parse_json('{"model": "é"}'.encode("utf-16")) == {"model": "é"}
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        parse_json(b'{"model": "a"} {}')
    with pytest.raises(json.JSONDecodeError, match="Expecting ':' delimiter"):
        parse_json(b'{"model" "a"}')
