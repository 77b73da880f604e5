"""Sets of places and how a policy's names are read as ISO codes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.policy.places import ANYWHERE, NOWHERE, PlaceSet
from geopin.policy.places_iso import (
    NameKind,
    classify,
    country_name,
    invalid_code_hint,
    is_country,
    is_subdivision,
    looks_like_code,
    subdivision_name,
)

COUNTRIES = ["CA", "DE", "FR", "US"]
SUBDIVISIONS = ["CA-QC", "CA-ON", "DE-BY", "US-CA", "US-VA"]
# Every (country, subdivision) a client can be in, for these places.
POINTS = [(c, None) for c in COUNTRIES] + [(s[:2], s) for s in SUBDIVISIONS]


def _set(*codes: str) -> PlaceSet:
    return PlaceSet(
        frozenset(c for c in codes if len(c) == 2), frozenset(c for c in codes if len(c) > 2)
    )


place_sets = st.one_of(
    st.just(ANYWHERE),
    st.builds(
        PlaceSet,
        st.frozensets(st.sampled_from(COUNTRIES)),
        st.frozensets(st.sampled_from(SUBDIVISIONS)),
    ),
)


def test_a_country_contains_its_subdivisions_but_not_the_reverse() -> None:
    places = _set("CA", "US-VA")
    assert places.contains("CA")
    assert places.contains("CA", "CA-QC")
    assert places.contains("US", "US-VA")
    assert not places.contains("US")  # somewhere in the US: not known to be Virginia
    assert not places.contains("US", "US-CA")
    assert not places.contains(None)


def test_anywhere_and_nowhere() -> None:
    assert ANYWHERE.contains("JP") and ANYWHERE.contains(None)
    assert not NOWHERE.contains("JP")
    assert NOWHERE.empty and not ANYWHERE.empty
    assert ANYWHERE.codes() == ("*",)
    assert NOWHERE.codes() == ()


def test_intersection_keeps_subdivisions_inside_the_other_sets_countries() -> None:
    assert _set("CA", "US").intersect(_set("CA-QC", "DE")) == _set("CA-QC")
    assert _set("CA-QC").intersect(_set("CA-ON")).empty
    assert _set("DE").intersect(ANYWHERE) == _set("DE")
    assert ANYWHERE.intersect(_set("DE")) == _set("DE")


def test_codes_are_sorted_countries_then_subdivisions_not_already_covered() -> None:
    assert _set("US", "CA-QC", "DE", "US-VA").codes() == ("DE", "US", "CA-QC")


@settings(max_examples=200, deadline=None)
@given(place_sets, place_sets)
def test_intersection_contains_exactly_what_both_contain(a: PlaceSet, b: PlaceSet) -> None:
    both = a.intersect(b)
    assert both.codes() == b.intersect(a).codes()
    for country, subdivision in POINTS:
        assert both.contains(country, subdivision) == (
            a.contains(country, subdivision) and b.contains(country, subdivision)
        )


@settings(max_examples=200, deadline=None)
@given(place_sets, place_sets)
def test_union_contains_exactly_what_either_contains(a: PlaceSet, b: PlaceSet) -> None:
    either = a.union(b)
    for country, subdivision in POINTS:
        assert either.contains(country, subdivision) == (
            a.contains(country, subdivision) or b.contains(country, subdivision)
        )


@settings(max_examples=200, deadline=None)
@given(place_sets)
def test_codes_describe_the_same_places(places: PlaceSet) -> None:
    codes = places.codes()
    again = ANYWHERE if codes == ("*",) else _set(*codes)
    for country, subdivision in POINTS:
        assert again.contains(country, subdivision) == places.contains(country, subdivision)


# --- ISO codes and names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "country", "subdivision"),
    [
        ("DE", True, False),
        ("GB", True, False),
        ("UK", False, False),
        ("EL", False, False),
        ("de", False, False),
        ("CA-QC", False, True),
        ("US-VA", False, True),
        ("CA-ZZ", False, False),
        ("ca-qc", False, False),
        ("QC", False, False),
        ("DEU", False, False),
    ],
)
def test_iso_codes(code: str, country: bool, subdivision: bool) -> None:
    assert (is_country(code), is_subdivision(code)) == (country, subdivision)


def test_names_read_as_jurisdiction_first_then_codes() -> None:
    jurisdictions = {"EEA", "QUEBEC"}
    assert classify("unknown", jurisdictions) is NameKind.UNKNOWN
    assert classify("EEA", jurisdictions) is NameKind.JURISDICTION
    assert classify("DE", jurisdictions) is NameKind.COUNTRY
    assert classify("CA-QC", jurisdictions) is NameKind.SUBDIVISION
    assert classify("EEEA", jurisdictions) is NameKind.INVALID
    assert classify("UK", jurisdictions) is NameKind.INVALID


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("EL", "ISO 3166-1 spells it 'GR'"),
        ("UK", "ISO 3166-1 spells it 'GB'"),
        ("uk", "ISO 3166-1 spells it 'GB'"),
        ("fr", "ISO codes are upper case: 'FR'"),
        ("ca-qc", "ISO codes are upper case: 'CA-QC'"),
        ("CA-ZZ", "'CA' has no subdivision 'ZZ' in ISO 3166-2"),
        ("CA-QC", "'CA-QC' is an ISO 3166-2 subdivision, not a country"),
        ("XX", None),
        ("XX-YY", None),
        ("Mars", None),
    ],
)
def test_hints_for_invalid_codes(name: str, hint: str | None) -> None:
    assert invalid_code_hint(name) == hint


def test_looks_like_code_and_names() -> None:
    assert looks_like_code("XX") and looks_like_code("XX-1") and not looks_like_code("EEA")
    assert country_name("DE") == "Germany"
    assert subdivision_name("CA-QC") == "Quebec"
    assert country_name("XX") == "XX"
