"""The shipped example policy is valid and every decision case beside it passes."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.cases import CaseReport, case_files, run_cases
from geopin.policy.compile import CompiledPolicy
from geopin.policy.decision import RequestContext
from geopin.policy.engine import decide
from geopin.policy.loader import load_policy, load_with_problems, parse_yaml

POLICIES = Path(__file__).resolve().parents[1] / "policies"


@cache
def _policy() -> CompiledPolicy:
    return load_policy(POLICIES)


@cache
def _report(file: Path) -> CaseReport:
    return run_cases(_policy(), [file])


def _cases() -> list:
    params = []
    for file in case_files(POLICIES):
        parsed = parse_yaml(str(file), file.read_bytes(), [])
        assert parsed is not None, f"{file} is not valid YAML"
        for index, case in enumerate(parsed[0]["cases"]):
            params.append(pytest.param(file, index, id=f"{file.stem}: {case['note']}"))
    return params


def test_the_shipped_policy_is_valid() -> None:
    policy, problems = load_with_problems(POLICIES)
    assert policy is not None, "\n".join(map(str, problems))
    # Its only warnings are the gaps it documents (e.g. Mistral's EU host reaching into CH).
    assert {p.code for p in problems} <= {"no-compliant-endpoint"}
    assert policy.metadata is not None and policy.metadata.disclaimer


def test_there_are_cases_for_the_shipped_policy() -> None:
    assert len(_cases()) >= 20


@pytest.mark.parametrize(("file", "index"), _cases())
def test_shipped_case(file: Path, index: int) -> None:
    report = _report(file)
    assert report.problems == [], "\n".join(map(str, report.problems))
    result = report.results[index]
    assert result.passed, f"{result.position}: {result.note}\n" + "\n".join(result.failures)


def test_every_rule_of_the_shipped_policy_is_exercised_by_a_case() -> None:
    policy = _policy()
    matched: set[str] = set()
    for file in case_files(POLICIES):
        parsed = parse_yaml(str(file), file.read_bytes(), [])
        assert parsed is not None
        for case in parsed[0]["cases"]:
            matched |= set(decide(policy, _context(case["request"])).rule_ids)
    assert {r.id for r in policy.all_rules()} - matched == set()


def _context(request: dict) -> RequestContext:
    if request.get("unknown"):
        location = UNKNOWN
    else:
        subdivision = request.get("subdivision")
        country = request.get("country") or subdivision.split("-")[0]
        location = Location(country, subdivision, LocationSource.DECLARED)
    return RequestContext(
        location=location,
        model=request["model"],
        tenant=request.get("tenant"),
        data_class=request.get("data_class"),
    )
