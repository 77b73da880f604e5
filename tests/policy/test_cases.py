"""Decision cases: behaviour as data, checked against a policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from geopin.geo.location import Location, LocationSource
from geopin.policy.cases import CaseReport, case_files, run_cases

from .conftest import make_policy, shown, write_text


def _run(tmp_path: Path, text: str, **kwargs) -> CaseReport:
    write_text(tmp_path / "tests", text, "cases.yaml")
    return run_cases(make_policy(), case_files("."), **kwargs)  # "." is tmp_path


def test_a_passing_case_checks_every_expectation(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        """
        cases:
          - note: EEA clients stay in the EEA
            request: {country: FR, model: gpt-4o}
            expect:
              action: route
              permitted: [EEA]
              endpoint: de-regional
              candidates: [de-regional, se-regional, fr-central]
              not_endpoints: [ie-zone, ch-regional]
              rules: [eea-in-eea]
          - note: a model no endpoint serves
            request: {country: FR, model: gpt-9}
            expect: {action: deny, deny_code: unknown_model}
          - note: unknown locations are refused
            request: {unknown: true, model: gpt-4o}
            expect: {action: deny, deny_code: rule_deny, deny_rule: defaults.unknown_location}
          - note: a subdivision alone gives its country
            request: {subdivision: CA-QC, model: gpt-4o, tenant: acme, data_class: pii}
            expect: {action: route, endpoint: ca-qc, rules: [defaults.no_match]}
        """,
    )
    assert report.problems == []
    assert [(r.note, r.failures) for r in report.results] == [
        ("EEA clients stay in the EEA", []),
        ("a model no endpoint serves", []),
        ("unknown locations are refused", []),
        ("a subdivision alone gives its country", []),
    ]
    assert [str(r.position) for r in report.results] == [
        "tests/cases.yaml:2:5",
        "tests/cases.yaml:11:5",
        "tests/cases.yaml:14:5",
        "tests/cases.yaml:17:5",
    ]
    assert report.ok


def test_a_failing_case_says_what_differed_and_carries_the_explanation(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        """
        cases:
          - note: wrong about everything
            request: {country: FR, model: gpt-4o}
            expect:
              action: deny
              permitted: [DE]
              endpoint: se-regional
              candidates: [se-regional]
              not_endpoints: [de-regional, ie-zone]
              rules: [defaults.no_match]
              deny_code: no_permitted_place
              deny_rule: eea-in-eea
        """,
    )
    [result] = report.results
    assert not result.passed and not report.ok
    assert result.failures == [
        "action: expected deny, got route",
        "permitted: expected ['DE'], got ['DE', 'FR', 'IE', 'NL', 'SE']",
        "endpoint: expected se-regional, got de-regional",
        "candidates: expected ['se-regional'], got ['de-regional', 'se-regional', 'fr-central']",
        "not_endpoints: de-regional is a candidate",
        "rules: expected ['defaults.no_match'], got ['eea-in-eea']",
        "deny_code: expected no_permitted_place, got None",
        "deny_rule: expected eea-in-eea, got None",
    ]
    assert result.explanation is not None
    assert result.explanation.decision.rule_ids == ("eea-in-eea",)


def test_an_ip_case_uses_the_callers_locator(tmp_path: Path) -> None:
    text = """
        cases:
          - note: located by address
            request: {ip: 192.0.2.7, model: gpt-4o}
            expect: {action: route, rules: [eea-in-eea]}
        """
    without = _run(tmp_path, text)
    assert without.results[0].failures == [
        "an 'ip' request needs a locator (run it with `geopin policy test`)"
    ]
    seen: list[str] = []

    def locate(ip: str) -> Location:
        seen.append(ip)
        return Location("SE", source=LocationSource.MMDB)

    located = _run(tmp_path, text, locate=locate)
    assert seen == ["192.0.2.7"]
    assert located.ok


def test_names_in_expectations_must_exist(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        """
        cases:
          - note: typos
            request: {country: FR, model: gpt-4o}
            expect:
              action: route
              endpoint: de-regionl
              rules: [eea-in-eea, eea]
        """,
    )
    assert [shown(p) for p in report.problems] == [
        ("tests/cases.yaml:5:7", "unknown-name", "unknown endpoint 'de-regionl'", None),
        ("tests/cases.yaml:5:7", "unknown-name", "unknown rule 'eea'", None),
    ]
    assert not report.ok


@pytest.mark.parametrize(
    ("request_text", "message"),
    [
        (
            "{country: FR, ip: 192.0.2.1, model: gpt-4o}",
            "cases[0].request: give exactly one of 'country' (with 'subdivision'), 'ip', 'unknown'",
        ),
        (
            "{model: gpt-4o}",
            "cases[0].request: give exactly one of 'country' (with 'subdivision'), 'ip', 'unknown'",
        ),
        ("{country: FR}", "cases[0].request: missing required key 'model'"),
    ],
)
def test_a_malformed_request_is_a_problem_with_its_position(
    tmp_path: Path, request_text: str, message: str
) -> None:
    report = _run(
        tmp_path,
        f"""
        cases:
          - note: malformed
            request: {request_text}
            expect: {{action: route}}
        """,
    )
    assert [(str(p.position), p.code, p.message) for p in report.problems] == [
        ("tests/cases.yaml:3:14", "invalid-value", message)
    ]
    assert report.results == [] and not report.ok


def test_an_unknown_expectation_key_has_a_did_you_mean(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        """
        cases:
          - note: typo
            request: {country: FR, model: gpt-4o}
            expect: {action: route, endpionts: [x]}
        """,
    )
    assert [shown(p) for p in report.problems] == [
        (
            "tests/cases.yaml:4:29",
            "unknown-key",
            "unknown key 'endpionts' in cases[0].expect",
            "did you mean 'endpoint'?",
        )
    ]


def test_a_case_file_with_broken_yaml_is_a_problem(tmp_path: Path) -> None:
    report = _run(tmp_path, "cases:\n  - note: [unclosed\n")
    assert [p.code for p in report.problems] == ["yaml-syntax"]
    assert not report.ok


def test_case_files_are_the_yaml_files_under_tests_in_order(tmp_path: Path) -> None:
    assert case_files(tmp_path) == []
    for name in ("b.yaml", "a.yml", "notes.txt"):
        write_text(tmp_path / "tests", "cases: []\n", name)
    assert [p.name for p in case_files(tmp_path)] == ["a.yml", "b.yaml"]
    assert not run_cases(make_policy(), case_files(tmp_path)).ok  # no cases at all


def test_a_case_for_a_call_naming_no_model_says_so_with_null(tmp_path: Path) -> None:
    report = _run(
        tmp_path,
        """
        cases:
          - note: uploads from France go to any EEA endpoint, whatever it serves
            request: {country: FR, model: null}
            expect: {action: route, candidates: [de-regional, se-regional, nl-edge, fr-central]}
          - note: wrong on purpose
            request: {country: FR, model: null}
            expect: {action: route, candidates: [de-regional]}
        """,
    )
    assert report.problems == []
    assert report.results[0].failures == []
    assert report.results[1].failures != []
