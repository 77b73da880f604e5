from __future__ import annotations

from datetime import timedelta

import pytest
from audit_factories import (
    T0,
    add_pending,
    append_and_sequence,
    make_decision,
    make_denial,
    make_endpoint,
    make_outcome,
    make_record,
)

from geopin.audit.query import Filters, QueryError, decode_cursor, parse_bound, query_records, stats
from geopin.policy.decision import RuleMatch
from geopin.policy.places import PlaceSet

US = make_endpoint(id="us-east", country="US")


@pytest.fixture
def filled(engine):
    records = []
    for n in range(30):
        country = ["FR", "DE", "CA", "US"][n % 4]
        subdivision = "CA-QC" if country == "CA" and n % 8 == 2 else None
        when = T0 + timedelta(days=n % 3, minutes=n)
        if country == "US":
            records.append(make_record(n, country=country, endpoint=US, time=when, tenant="globex"))
        elif n == 29:
            records.append(make_record(n, country=country, decision=make_denial(), time=when))
        else:
            decision = (
                make_decision(
                    matched=(RuleMatch("eu-residency", "process_in"), RuleMatch("qc", "process_in"))
                )
                if subdivision
                else make_decision()
            )
            records.append(
                make_record(
                    n, country=country, subdivision=subdivision, decision=decision, time=when
                )
            )
    records.append(make_outcome(0))
    append_and_sequence(engine, records)
    return engine, records


def test_filters_by_field_and_time(filled):
    engine, records = filled
    page = query_records(engine, Filters.build(country="DE"), limit=100)
    assert [r["seq"] for r in page.rows] == [n for n in range(30) if n % 4 == 1]
    day1 = Filters.build(since="2026-11-02", until="2026-11-02", country=["FR", "DE"])
    got = query_records(engine, day1).rows
    assert got and all(r["ts"].startswith("2026-11-02") for r in got)
    assert {r["country"] for r in got} <= {"FR", "DE"}
    assert len(got) == sum(
        1
        for r in records[:30]
        if r["time"].startswith("2026-11-02") and r["country"] in ("FR", "DE")
    )
    assert query_records(engine, Filters.build(processing_country="US", tenant="globex")).rows
    assert [r["seq"] for r in query_records(engine, Filters.build(action="deny")).rows] == [29]
    assert [r["seq"] for r in query_records(engine, Filters.build(kind="outcome")).rows] == [30]
    assert [r["seq"] for r in query_records(engine, Filters.build(rule="qc")).rows] == [
        2,
        10,
        18,
        26,
    ]
    assert (
        query_records(engine, Filters.build(decision_id="dec-000007")).rows[0]["record"]
        == records[7]
    )


def test_jurisdiction_filter_uses_countries_and_subdivisions(filled):
    engine, _ = filled
    quebec = PlaceSet(subdivisions=frozenset({"CA-QC"}))
    assert [r["seq"] for r in query_records(engine, Filters.build(places=quebec)).rows] == [
        2,
        10,
        18,
        26,
    ]
    eu = PlaceSet(countries=frozenset({"FR", "DE"}))
    assert {r["country"] for r in query_records(engine, Filters.build(places=eu)).rows} == {
        "FR",
        "DE",
    }
    nowhere = PlaceSet()
    assert query_records(engine, Filters.build(places=nowhere)).rows == []


def test_keyset_pagination_walks_everything_once(filled):
    engine, records = filled
    seen, cursor = [], None
    while True:
        page = query_records(engine, Filters(), limit=7, cursor=cursor)
        seen.extend(r["seq"] for r in page.rows)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(range(len(records)))
    # A cursor stays valid while the log grows: it resumes after its seq, not at an offset.
    page = query_records(engine, Filters(), limit=7)
    append_and_sequence(engine, [make_record(100)])
    rest = query_records(engine, Filters(), limit=1000, cursor=page.next_cursor)
    assert rest.rows[0]["seq"] == 7 and rest.rows[-1]["seq"] == len(records)


def test_stats_group_and_count(filled):
    engine, _ = filled
    result = stats(engine, Filters.build(kind="decision"), ["processing_country"])
    counts = {g["processing_country"]: g["count"] for g in result.groups}
    assert counts == {"DE": 22, "US": 7, None: 1}  # the denial was processed nowhere
    assert result.total == 30
    by_two = stats(engine, Filters.build(kind="decision", country="CA"), ["country", "subdivision"])
    assert {(g["subdivision"], g["count"]) for g in by_two.groups} == {("CA-QC", 4), (None, 3)}
    rules = stats(engine, Filters.build(kind="decision"), ["rule"])
    assert {g["rule"]: g["count"] for g in rules.groups}["qc"] == 4
    days = stats(engine, Filters.build(kind="decision"), ["day"])
    assert sum(g["count"] for g in days.groups) == 30 and len(days.groups) == 3


def test_pending_records_are_counted_not_returned(filled):
    engine, records = filled
    add_pending(engine, [make_record(200), make_record(201)])
    page = query_records(engine, Filters(), limit=1000)
    assert len(page.rows) == len(records) and page.pending == 2
    assert stats(engine, Filters(), ["kind"]).pending == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda: Filters.build(colour="red"),
        lambda: parse_bound("yesterday", "since"),
        lambda: decode_cursor("42"),
    ],
)
def test_bad_queries_are_query_errors(call):
    with pytest.raises(QueryError):
        call()


def test_bad_limit_and_group(engine):
    with pytest.raises(QueryError, match="limit"):
        query_records(engine, Filters(), limit=0)
    with pytest.raises(QueryError, match="cannot group by"):
        stats(engine, Filters(), ["colour"])


def test_bounds():
    assert parse_bound("2026-11-01", "since") == "2026-11-01T00:00:00.000000Z"
    assert parse_bound("2026-11-01", "until") == "2026-11-02T00:00:00.000000Z"
    assert parse_bound("2026-11-01T10:00:00+01:00", "since") == "2026-11-01T09:00:00.000000Z"
    assert parse_bound("2026-11-01T10:00", "until") == "2026-11-01T10:00:00.000000Z"
