"""Whole-policy validation: ISO codes, names that resolve, duplicates, cycles, odd rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from geopin.policy.loader import load_with_problems
from geopin.policy.problems import Severity

from .conftest import errors, problems_in, shown, warnings, with_code, write_text

ENDPOINTS = """
endpoints:
  - id: de
    url: https://de.example/v1
    kind: openai-compatible
    country: DE
    models: {gpt-4o: null, gpt-4o-mini: null}
"""  # lines 1-6; what a test appends starts on line 7


def _errors(text: str) -> list[tuple[str, str, str, str | None]]:
    return [shown(p) for p in errors(problems_in(ENDPOINTS + text))]


# --- ISO codes ---------------------------------------------------------------------------


def test_invalid_country_codes_in_a_jurisdiction() -> None:
    assert _errors("jurisdictions:\n  EEA:\n    countries: [DE, XX, EL, UK, de]\n") == [
        ("policy.yaml:9:21", "invalid-code", "'XX' is not an ISO 3166 country code", None),
        (
            "policy.yaml:9:25",
            "invalid-code",
            "'EL' is not an ISO 3166 country code",
            "ISO 3166-1 spells it 'GR'",
        ),
        (
            "policy.yaml:9:29",
            "invalid-code",
            "'UK' is not an ISO 3166 country code",
            "ISO 3166-1 spells it 'GB'",
        ),
        (
            "policy.yaml:9:33",
            "invalid-code",
            "'de' is not an ISO 3166 country code",
            "ISO codes are upper case: 'DE'",
        ),
    ]


def test_a_subdivision_code_is_not_a_country() -> None:
    assert _errors("jurisdictions:\n  Q:\n    countries: [CA-QC]\n") == [
        (
            "policy.yaml:9:17",
            "invalid-code",
            "'CA-QC' is not an ISO 3166 country code",
            "'CA-QC' is an ISO 3166-2 subdivision, not a country",
        ),
    ]


def test_invalid_subdivision_codes_in_a_jurisdiction() -> None:
    assert _errors("jurisdictions:\n  Q:\n    subdivisions: [CA-QC, CA-ZZ, ca-qc, QC]\n") == [
        (
            "policy.yaml:9:27",
            "invalid-code",
            "'CA-ZZ' is not an ISO 3166 subdivision code",
            "'CA' has no subdivision 'ZZ' in ISO 3166-2",
        ),
        (
            "policy.yaml:9:34",
            "invalid-code",
            "'ca-qc' is not an ISO 3166 subdivision code",
            "ISO codes are upper case: 'CA-QC'",
        ),
        ("policy.yaml:9:41", "invalid-code", "'QC' is not an ISO 3166 subdivision code", None),
    ]


def test_invalid_codes_in_an_endpoint() -> None:
    text = ENDPOINTS.replace("country: DE", "country: uk\n    may_process_in: [CH, el, XX]")
    assert [shown(p) for p in errors(problems_in(text))] == [
        (
            "policy.yaml:5:14",
            "invalid-code",
            "'uk' is not an ISO 3166 country code",
            "ISO 3166-1 spells it 'GB'",
        ),
        (
            "policy.yaml:6:26",
            "invalid-code",
            "'el' is not an ISO 3166 place code",
            "ISO 3166-1 spells it 'GR'",
        ),
        ("policy.yaml:6:30", "invalid-code", "'XX' is not an ISO 3166 place code", None),
    ]


def test_an_endpoint_subdivision_must_be_valid_and_in_its_country() -> None:
    text = ENDPOINTS.replace("country: DE", "country: DE\n    subdivision: FR-75C")
    assert [shown(p) for p in errors(problems_in(text))] == [
        ("policy.yaml:6:18", "invalid-value", "subdivision FR-75C is not in country DE", None),
    ]
    text = ENDPOINTS.replace("country: DE", "country: DE\n    subdivision: DE-XX")
    assert [shown(p) for p in errors(problems_in(text))] == [
        (
            "policy.yaml:6:18",
            "invalid-code",
            "'DE-XX' is not an ISO 3166 subdivision code",
            "'DE' has no subdivision 'XX' in ISO 3166-2",
        ),
    ]


def test_invalid_codes_in_rules_from_and_process_in() -> None:
    text = "rules:\n  - id: r\n    from: [EL, DE-ZZ]\n    process_in: [UK, de, ca-qc]\n"
    assert _errors(text) == [
        (
            "policy.yaml:9:12",
            "invalid-code",
            "'EL' is not an ISO 3166 place code",
            "ISO 3166-1 spells it 'GR'",
        ),
        (
            "policy.yaml:9:16",
            "invalid-code",
            "'DE-ZZ' is not an ISO 3166 place code",
            "'DE' has no subdivision 'ZZ' in ISO 3166-2",
        ),
        (
            "policy.yaml:10:18",
            "invalid-code",
            "'UK' is not an ISO 3166 place code",
            "ISO 3166-1 spells it 'GB'",
        ),
        (
            "policy.yaml:10:22",
            "invalid-code",
            "'de' is not an ISO 3166 place code",
            "ISO codes are upper case: 'DE'",
        ),
        (
            "policy.yaml:10:26",
            "invalid-code",
            "'ca-qc' is not an ISO 3166 place code",
            "ISO codes are upper case: 'CA-QC'",
        ),
    ]


def test_valid_codes_jurisdictions_and_unknown_in_from_raise_nothing() -> None:
    text = (
        "jurisdictions:\n  EEA: {countries: [DE, FR]}\n"
        "rules:\n  - id: r\n    from: [EEA, CA-QC, US, unknown]\n    process_in: [EEA, CH]\n"
    )
    assert problems_in(ENDPOINTS + text) == []


# --- names that do not resolve -----------------------------------------------------------


def test_unknown_jurisdictions_with_did_you_mean() -> None:
    text = """jurisdictions:
  EEA: {countries: [DE], include: [NORTH_AMERIKA]}
  NORTH_AMERICA: {countries: [US, CA]}
rules:
  - id: r
    from: [EEEA, Mars]
    process_in: [EEA]
defaults:
  no_match: {process_in: [NORTH_AMERICAS]}
"""
    assert _errors(text) == [
        (
            "policy.yaml:8:36",
            "unknown-jurisdiction",
            "unknown jurisdiction 'NORTH_AMERIKA'",
            "did you mean 'NORTH_AMERICA'?",
        ),
        (
            "policy.yaml:12:12",
            "unknown-jurisdiction",
            "unknown jurisdiction 'EEEA'",
            "did you mean 'EEA'?",
        ),
        ("policy.yaml:12:18", "unknown-jurisdiction", "unknown jurisdiction 'Mars'", None),
        (
            "policy.yaml:15:27",
            "unknown-jurisdiction",
            "unknown jurisdiction 'NORTH_AMERICAS'",
            "did you mean 'NORTH_AMERICA'?",
        ),
    ]


def test_unknown_tenant_with_did_you_mean() -> None:
    text = "tenants:\n  acme-health: {}\nrules:\n  - id: r\n    tenants: [acme-helth, zzz]\n"
    text += "    process_in: [DE]\n"
    assert _errors(text) == [
        (
            "policy.yaml:11:15",
            "unknown-tenant",
            "unknown tenant 'acme-helth'",
            "did you mean 'acme-health'?",
        ),
        ("policy.yaml:11:27", "unknown-tenant", "unknown tenant 'zzz'", None),
    ]


def test_unknown_data_classes() -> None:
    text = """data_classes: [public, pii]
rules:
  - id: r
    data_classes: [PII, secret]
    process_in: [DE]
defaults:
  data_class: internal
"""
    assert _errors(text) == [
        (
            "policy.yaml:10:20",
            "unknown-data-class",
            "unknown data class 'PII'",
            "did you mean 'pii'?",
        ),
        (
            "policy.yaml:10:25",
            "unknown-data-class",
            "unknown data class 'secret'",
            "declare it under the top-level 'data_classes' list",
        ),
        (
            "policy.yaml:13:15",
            "unknown-data-class",
            "unknown data class 'internal'",
            "declare it under the top-level 'data_classes' list",
        ),
    ]


def test_unknown_models_in_rules_and_the_models_section() -> None:
    text = """models:
  gpt-4o-mni: {prefer_tier: edge}
rules:
  - id: r
    models: [gpt-4o, gpt-4o-*, gtp-4o, claude-*]
    process_in: [DE]
"""
    assert _errors(text) == [
        (
            "policy.yaml:8:3",
            "unknown-model",
            "model 'gpt-4o-mni' is served by no endpoint",
            "did you mean 'gpt-4o-mini'?",
        ),
        (
            "policy.yaml:11:32",
            "unknown-model",
            "model 'gtp-4o' is served by no endpoint",
            "did you mean 'gpt-4o'?",
        ),
        ("policy.yaml:11:40", "unknown-model", "model 'claude-*' is served by no endpoint", None),
    ]


# --- duplicates --------------------------------------------------------------------------


def test_duplicate_endpoint_ids_in_one_file_and_across_files(tmp_path: Path) -> None:
    write_text(tmp_path, ENDPOINTS + ENDPOINTS.replace("endpoints:\n", ""), "a.yaml")
    write_text(tmp_path, ENDPOINTS, "b.yaml")
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        (
            "a.yaml:8:9",
            "duplicate-id",
            "endpoint 'de' is defined twice (first at a.yaml:2:9)",
            None,
        ),
        (
            "b.yaml:2:9",
            "duplicate-id",
            "endpoint 'de' is defined twice (first at a.yaml:2:9)",
            None,
        ),
    ]


def test_duplicate_rule_ids_across_files_and_tenants(tmp_path: Path) -> None:
    rules = "rules:\n  - id: de-only\n    process_in: [DE]\n"
    write_text(tmp_path, ENDPOINTS + rules, "a.yaml")
    write_text(
        tmp_path,
        rules
        + """tenants:
  acme:
    rules:
      - id: de-only
        process_in: [DE]
      - id: acme-rule
        process_in: [DE]
  globex:
    rules:
      - id: acme-rule
        process_in: [DE]
""",
        "b.yaml",
    )
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        (
            "b.yaml:2:9",
            "duplicate-id",
            "rule 'de-only' is defined twice (first at a.yaml:8:9)",
            None,
        ),
        (
            "b.yaml:7:13",
            "duplicate-id",
            "rule 'de-only' is defined twice (first at a.yaml:8:9)",
            None,
        ),
        (
            "b.yaml:13:13",
            "duplicate-id",
            "rule 'acme-rule' is defined twice (first at b.yaml:9:13)",
            None,
        ),
    ]


# --- jurisdictions -----------------------------------------------------------------------


def test_a_jurisdiction_that_includes_itself() -> None:
    assert _errors("jurisdictions:\n  LOOP: {countries: [DE], include: [LOOP]}\n") == [
        (
            "policy.yaml:8:36",
            "jurisdiction-cycle",
            "jurisdictions include each other: LOOP -> LOOP",
            None,
        )
    ]


def test_an_indirect_jurisdiction_cycle_is_reported_once_with_its_path() -> None:
    text = """jurisdictions:
  A: {countries: [DE], include: [B]}
  B: {include: [C]}
  C: {include: [A]}
  D: {include: [A]}
"""
    assert _errors(text) == [
        (
            "policy.yaml:8:33",
            "jurisdiction-cycle",
            "jurisdictions include each other: A -> B -> C -> A",
            None,
        )
    ]


@pytest.mark.parametrize(
    ("name", "what"),
    [("FR", "an ISO code"), ("CA-QC", "an ISO code"), ("unknown", "the unknown location")],
)
def test_jurisdiction_names_must_not_read_as_codes_or_unknown(name: str, what: str) -> None:
    assert _errors(f"jurisdictions:\n  {name}: {{countries: [FR]}}\n") == [
        (
            "policy.yaml:8:3",
            "shadowed-name",
            f"jurisdiction name '{name}' reads as {what}",
            "use a longer name such as 'EEA' or 'GB_ADEQUATE'",
        )
    ]


def test_a_jurisdiction_with_no_places_is_a_warning() -> None:
    problems = problems_in(ENDPOINTS + "jurisdictions:\n  NOWHERE: {name: Nowhere}\n")
    assert [(shown(p), p.severity) for p in problems] == [
        (
            ("policy.yaml:8:3", "empty-jurisdiction", "jurisdiction 'NOWHERE' has no places", None),
            Severity.WARNING,
        )
    ]


# --- rules -------------------------------------------------------------------------------


def test_unknown_is_a_client_location_not_a_place_to_process_in() -> None:
    text = """rules:
  - id: r
    from: [unknown]
    process_in: [DE, unknown]
defaults:
  unknown_location: {process_in: [unknown]}
"""
    message = "'unknown' is a client location, not a place to process in"
    assert _errors(text) == [
        ("policy.yaml:10:22", "invalid-value", message, None),
        ("policy.yaml:12:35", "invalid-value", message, None),
    ]


def test_a_tenants_rule_cannot_name_tenants() -> None:
    text = """tenants:
  acme:
    rules:
      - id: r
        tenants: [acme]
        process_in: [DE]
"""
    assert _errors(text) == [
        (
            "policy.yaml:11:9",
            "invalid-value",
            "rule 'r' belongs to tenant 'acme' and cannot name tenants",
            None,
        )
    ]


@pytest.mark.parametrize("key", ["from", "tenants", "models", "data_classes"])
def test_a_rule_with_an_empty_condition_never_matches(key: str) -> None:
    problems = problems_in(ENDPOINTS + f"rules:\n  - id: r\n    {key}: []\n    process_in: [DE]\n")
    assert errors(problems) == []
    assert [(shown(p), p.severity) for p in with_code(problems, "never-matches")] == [
        (
            (
                "policy.yaml:9:5",
                "never-matches",
                f"rule 'r' can never match: '{key}' is empty",
                None,
            ),
            Severity.WARNING,
        )
    ]


def test_an_azure_endpoint_needs_an_api_version() -> None:
    text = ENDPOINTS.replace("openai-compatible", "azure-openai")
    assert [shown(p) for p in errors(problems_in(text))] == [
        (
            "policy.yaml:2:5",
            "invalid-value",
            "azure-openai endpoint 'de' needs an 'api_version'",
            None,
        )
    ]
    with_version = text.replace("country: DE", "country: DE\n    api_version: '2024-10-21'")
    assert errors(problems_in(with_version)) == []


def test_problems_found_by_the_schema_and_by_the_whole_policy_come_together() -> None:
    text = """jurisdictions:
  EEA: {countries: [DE, XX]}
rules:
  - id: a
    from: [EEA]
    process_in: [EEA]
    reasn: typo
  - id: b
    from: [EEEA]
    process_in: [UK]
"""
    problems = problems_in(ENDPOINTS + text)
    assert [(p.line, p.code) for p in problems] == [
        (8, "invalid-code"),
        (13, "unknown-key"),
        (15, "unknown-jurisdiction"),
        (16, "invalid-code"),
    ]
    assert warnings(problems) == []
