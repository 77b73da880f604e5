from __future__ import annotations

import hmac
import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from audit_factories import CLIENT_KEY, make_denial, make_outcome, make_record

from geopin.audit.canonical import canonical_json
from geopin.audit.records import (
    client_fields,
    encode,
    flat_columns,
    format_time,
    new_record_id,
    rule_ids,
)
from geopin.errors import AuditError, ConfigError

_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def test_record_ids_are_uuid7_unique_and_time_ordered():
    ids = [new_record_id() for _ in range(2000)]
    assert all(_UUID7.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # The 48-bit millisecond prefix never goes backwards within a process.
    stamps = [int(i.replace("-", "")[:12], 16) for i in ids]
    assert stamps == sorted(stamps)


def test_client_address_is_kept_as_prefix_and_keyed_hash_only():
    v4 = client_fields(ipaddress.ip_address("198.51.100.77"), CLIENT_KEY)
    assert v4["client_prefix"] == "198.51.100.0/24"
    assert "198.51.100.77" not in json.dumps(v4)
    # HMAC-SHA256 of the packed address, the same however often the keyed state is reused.
    expected = hmac.digest(CLIENT_KEY, bytes([198, 51, 100, 77]), "sha256").hex()
    assert v4["client_hmac"] == expected
    assert client_fields(ipaddress.ip_address("198.51.100.77"), CLIENT_KEY) == v4
    v6 = client_fields(ipaddress.ip_address("2001:db8:1:2:3::9"), CLIENT_KEY)
    assert v6["client_prefix"] == "2001:db8:1::/48"
    other_key = client_fields(ipaddress.ip_address("198.51.100.77"), b"another key")
    assert other_key["client_hmac"] != v4["client_hmac"]
    mapped = client_fields(ipaddress.ip_address("::ffff:198.51.100.77"), CLIENT_KEY)
    assert mapped == v4
    assert client_fields(None, None) == {"client_prefix": None, "client_hmac": None}
    with pytest.raises(ConfigError):
        client_fields(ipaddress.ip_address("198.51.100.77"), None)


def test_decision_record_is_flat_payload_free_and_canonical():
    record = make_record(3, country="CA", subdivision="CA-QC")
    assert record["v"] == 1 and record["kind"] == "decision"
    assert record["time"] == "2026-11-01T12:00:03.000000Z"
    assert record["endpoint"] == "eu-fra" and record["processing_country"] == "DE"
    assert record["rules"] == [{"id": "eu-residency", "effect": "process_in", "places": ["EEA"]}]
    body = encode(record)
    assert body == canonical_json(record)
    assert b"203.0.113.4" not in body  # only the /24 prefix
    assert flat_columns(record) == {
        "kind": "decision",
        "ts": "2026-11-01T12:00:03.000000Z",
        "tenant": "acme",
        "country": "CA",
        "subdivision": "CA-QC",
        "model": "gpt-x",
        "endpoint": "eu-fra",
        "processing_country": "DE",
        "action": "route",
        "policy_version": "p-1",
        "decision_id": "dec-000003",
        "object": None,  # a decision names none; an outcome the object its call made or named
    }
    assert rule_ids(record) == ["eu-residency"]


def test_a_denial_has_no_endpoint():
    record = make_record(1, decision=make_denial())
    assert record["action"] == "deny" and record["deny_code"] == "rule_deny"
    assert record["endpoint"] is None and record["processing_country"] is None
    encode(record)


def test_outcome_record_links_the_decision():
    record = make_outcome(2)
    assert record["kind"] == "outcome" and record["decision_id"] == "dec-000002"
    assert record["usage"] == {"input_tokens": 12, "output_tokens": 40}
    assert flat_columns(record)["processing_country"] == "DE"
    encode(record)


def test_times_are_utc_with_microseconds_and_naive_times_refused():
    paris = timezone(timedelta(hours=1))
    assert (
        format_time(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=paris)) == "2026-01-02T02:04:05.000006Z"
    )
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 2))
    assert format_time(datetime(2026, 1, 2, tzinfo=UTC)).endswith(".000000Z")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"v": 2}, "version"),
        ({"kind": "other"}, "kind"),
        ({"id": ""}, "id"),
        ({"time": "2026-11-01T12:00:00Z"}, "time"),
        ({"tenant": 5}, "tenant"),
        ({"latency": 1.5}, "float"),
    ],
)
def test_encode_refuses_malformed_records(change, message):
    record = {**make_record(), **change}
    with pytest.raises(AuditError, match=message):
        encode(record)


def test_records_of_real_decisions_take_the_fast_canonical_path():
    """Records are written on the request path: those built from the shipped policy's
    decisions hold only the plain types, so the C encoder writes them."""
    from pathlib import Path

    from geopin.audit import canonical
    from geopin.geo.location import Location, LocationSource
    from geopin.policy.decision import RequestContext
    from geopin.policy.engine import decide
    from geopin.policy.loader import load_policy

    policy = load_policy(Path(__file__).parents[2] / "policies")
    places = [("DE", None), ("CA", "CA-QC"), ("CN", None), ("US", None), (None, None)]
    actions = set()
    for country, subdivision in places:
        location = Location(country, subdivision, LocationSource.MMDB, "GeoIP2-City test")
        decision = decide(policy, RequestContext(location, "gpt-4o-mini", data_class="pii"))
        actions.add(str(decision.action))
        endpoint = decision.candidates[0] if decision.candidates else None
        record = make_record(
            1, decision=decision, country=country, subdivision=subdivision, endpoint=endpoint
        )
        assert canonical._plain(record), record
        assert encode(record) == canonical._encode(record).encode()
        outcome = make_outcome(1, endpoint=endpoint, usage={"prompt_tokens": 3})
        assert canonical._plain(outcome), outcome
    assert actions == {"route", "deny"}
