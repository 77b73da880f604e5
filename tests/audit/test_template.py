"""geopin.audit.template and the record encoders built on it: the same bytes as canonical_json."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import pytest
from audit_factories import CLIENT_KEY, make_decision, make_denial, make_endpoint
from hypothesis import given
from hypothesis import strategies as st

from geopin.audit.canonical import MAX_SAFE_INTEGER, canonical_json
from geopin.audit.records import (
    DecisionEncoder,
    decision_record,
    encode,
    encode_outcome,
    now_text,
    outcome_record,
)
from geopin.audit.template import RecordTemplate
from geopin.errors import AuditError
from geopin.geo.location import Location, LocationSource
from geopin.policy.decision import RuleMatch

_keys = st.text(max_size=6)  # any text: non-ASCII and astral keys sort by UTF-16 units
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.text(st.one_of(st.characters(), st.sampled_from(['"', "\\", "%", "{", "\n", "\x00"]))),
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=10), st.data())
def test_rendering_equals_canonical_json_of_the_whole_record(record, data):
    variable = data.draw(st.sets(st.sampled_from(sorted(record)))) if record else set()
    fixed = {k: v for k, v in record.items() if k not in variable}
    try:
        template = RecordTemplate(fixed, variable)
    except ValueError:  # a fixed member that has no canonical form (a lone surrogate)
        with pytest.raises(ValueError):
            canonical_json(record)
        return
    assert _outcome(lambda: template.render(record)) == _outcome(lambda: canonical_json(record))
    # The template is reused: other values in the same slots.
    other = {k: data.draw(_values) for k in variable}
    whole = {**fixed, **other}
    assert _outcome(lambda: template.render(other)) == _outcome(lambda: canonical_json(whole))


def _outcome(encoding):
    """The bytes, or the kind of error: a value without a canonical form fails both ways."""
    try:
        return encoding()
    except ValueError:
        return ValueError


def test_a_template_without_variables_or_fixed_members():
    assert RecordTemplate({}, []).render({}) == b"{}"
    assert RecordTemplate({}, ["a"]).render({"a": "%s"}) == b'{"a":"%s"}'
    assert RecordTemplate({"a": "100%"}, ["b"]).render({"b": 1}) == b'{"a":"100%","b":1}'


def test_render_refuses_what_canonical_json_refuses_naming_the_key():
    template = RecordTemplate({"v": 1}, ["latency", "tags"])
    with pytest.raises(TypeError, match=r"\$\.latency: float"):
        template.render({"latency": 0.5, "tags": []})
    with pytest.raises(ValueError, match=r"\$\.tags\[1\]: integer"):
        template.render({"latency": 1, "tags": [1, 2**60]})
    with pytest.raises(ValueError, match="lone surrogate"):
        template.render({"latency": 1, "tags": ["\ud800"]})
    with pytest.raises(KeyError):
        template.render({"latency": 1})


def test_a_key_cannot_be_both_fixed_and_variable():
    with pytest.raises(ValueError, match="both fixed and variable"):
        RecordTemplate({"a": 1}, ["a"])


def _location(country: str | None = "FR", subdivision: str | None = None) -> Location:
    return Location(country, subdivision, LocationSource.MMDB, database="GeoIP2-City test")


def _reference_decision(body: bytes, decision, endpoint, **facts) -> bytes:
    """encode(decision_record(...)) with the id and time the encoder chose."""
    record = json.loads(body)
    moment = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    reference = decision_record(
        decision,
        client_key=CLIENT_KEY,
        time=moment,
        endpoint=endpoint,
        record_id=record["id"],
        **facts,
    )
    return encode(reference)


@pytest.mark.parametrize(
    "decision",
    [
        make_decision(),
        make_denial(),
        make_decision(
            matched=(
                RuleMatch("eu", "process_in", ("EEA",)),
                RuleMatch("tenant-de", "process_in", ("DE",)),
            ),
            reason='quoted "reason" with 100% and \\ and é',
            legal_basis=None,
            data_class=None,
        ),
    ],
    ids=["routed", "denied", "odd-text"],
)
@pytest.mark.parametrize(
    "facts",
    [
        {
            "location": _location(),
            "client": ipaddress.ip_address("203.0.113.9"),
            "model": "gpt-x",
            "decision_id": "dec-1",
            "tenant": "acme",
            "data_class": "personal",
            "trace_id": "ab" * 16,
        },
        {
            "location": _location(None),
            "client": None,
            "model": "modèle \u2028",
            "decision_id": "dec-2",
            "tenant": None,
            "data_class": None,
            "trace_id": None,
        },
        {
            "location": _location("CA", "CA-QC"),
            "client": ipaddress.ip_address("2001:db8::1"),
            "model": "m",
            "decision_id": "dec-3",
            "tenant": "t",
            "data_class": None,
            "trace_id": None,
        },
    ],
    ids=["v4", "unknown", "v6"],
)
def test_decision_encoder_writes_the_bytes_of_encode_decision_record(decision, facts):
    encoder = DecisionEncoder(CLIENT_KEY)
    endpoint = decision.candidates[0] if decision.candidates else None
    for _ in range(2):  # the template made on the first call, reused on the second
        record_id, body = encoder.encode(decision, endpoint=endpoint, **facts)
        assert json.loads(body)["id"] == record_id
        assert body == _reference_decision(body, decision, endpoint, **facts)


def test_decision_encoder_keeps_a_template_per_decision_and_endpoint():
    encoder = DecisionEncoder(CLIENT_KEY, max_templates=2)
    first, second = make_endpoint(id="a"), make_endpoint(id="b", country="FR")
    decision = make_decision(candidates=(first, second), candidate_ranks=(0, 0))
    facts = {"location": _location(), "client": None, "model": "gpt-x", "decision_id": "d"}
    for endpoint in (first, second, None, first):  # a third pair empties the cache
        body = encoder.encode(decision, endpoint=endpoint, **facts)[1]
        record = json.loads(body)
        assert record["endpoint"] == (endpoint.id if endpoint else None)
        assert body == _reference_decision(body, decision, endpoint, **facts)
    assert len(encoder._templates) <= 2


def test_decision_encoder_refuses_a_non_string_in_an_indexed_field():
    encoder = DecisionEncoder(CLIENT_KEY)
    with pytest.raises(AuditError, match="'model' must be a string"):
        encoder.encode(
            make_decision(), location=_location(), client=None, model=42, decision_id="d"
        )


@pytest.mark.parametrize(
    "fields",
    [
        {
            "endpoint": make_endpoint(),
            "attempts": ["eu-fra"],
            "status": 200,
            "usage": {"output_tokens": 40, "input_tokens": 12},
            "bytes_in": 98,
            "bytes_out": 241,
        },
        {
            "endpoint": None,
            "attempts": ["a", "b"],
            "status": 503,
            "error": 'endpoint b: "timeout"',
            "location": None,
        },
    ],
    ids=["served", "failed"],
)
def test_encode_outcome_writes_the_bytes_of_encode_outcome_record(fields):
    common = {
        "decision_id": "dec-1",
        "latency_us": 1234,
        "model": "gpt-x",
        "tenant": "acme",
        "location": _location(),
        "policy_version": "p-1",
        "trace_id": "cd" * 16,
    }
    common.update(fields)
    record_id, body = encode_outcome(**common)
    record = json.loads(body)
    moment = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert record["id"] == record_id
    assert body == encode(outcome_record(time=moment, record_id=record_id, **common))


def test_now_text_is_format_time_of_now():
    before = datetime.now(UTC)
    text = now_text()
    after = datetime.now(UTC)
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before.replace(microsecond=0) <= moment <= after
    assert len(text) == len("2026-11-01T12:00:00.000000Z")
