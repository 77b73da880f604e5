"""Policy test cases: behaviour as data, kept beside the policies and run by
``geopin policy test`` and by pytest.

A case file is YAML with a ``cases`` list; each case has a ``note``, a ``request`` and what it
``expect``s. Locations are given as ``country``/``subdivision``, as ``unknown``, or as an ``ip``
that a caller-supplied locator resolves (the core does no I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, model_validator

from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.compile import CompiledPolicy, places_of
from geopin.policy.decision import Action, DenyCode, RequestContext
from geopin.policy.engine import decide
from geopin.policy.explain import Explanation, explain
from geopin.policy.loader import Positions, parse_yaml, validate_as
from geopin.policy.model import _Strict
from geopin.policy.places import PlaceSet
from geopin.policy.problems import Position, Problem, sort_key

Locator = Callable[[str], Location]


class CaseRequest(_Strict):
    country: str | None = None
    subdivision: str | None = None
    ip: str | None = None
    unknown: bool = False
    model: str | None = Field(
        description="The model the call names; null for a call that names none (files)."
    )
    tenant: str | None = None
    data_class: str | None = None

    @model_validator(mode="after")
    def _one_location(self):
        given = sum(x is not None for x in (self.country, self.ip)) + self.unknown
        if given != 1 and not (self.subdivision and given == 0):
            raise ValueError("give exactly one of 'country' (with 'subdivision'), 'ip', 'unknown'")
        return self


class CaseExpect(_Strict):
    action: Action
    permitted: list[str] | None = Field(None, description="Places, as a policy names them.")
    endpoint: str | None = Field(None, description="The first candidate.")
    candidates: list[str] | None = None
    not_endpoints: list[str] | None = None
    rules: list[str] | None = Field(None, description="Exactly the rules that matched.")
    deny_code: DenyCode | None = None
    deny_rule: str | None = None


class Case(_Strict):
    note: str
    request: CaseRequest
    expect: CaseExpect


class CaseFile(_Strict):
    cases: list[Case]


@dataclass
class CaseResult:
    note: str
    position: Position
    failures: list[str]
    explanation: Explanation | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class CaseReport:
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.passed for r in self.results) and bool(self.results)


def case_files(policy_dir: str | Path) -> list[Path]:
    folder = Path(policy_dir) / "tests"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))


def run_cases(
    policy: CompiledPolicy, files: list[Path], locate: Locator | None = None
) -> CaseReport:
    report = CaseReport()
    for file in files:
        parsed = parse_yaml(str(file), file.read_bytes(), report.problems)
        if parsed is None:
            continue
        data, positions = parsed
        case_file = validate_as(CaseFile, data, positions, report.problems)
        if case_file is None:
            continue
        for i, case in enumerate(case_file.cases):
            report.results.append(_run(policy, case, positions, i, locate, report.problems))
    report.problems.sort(key=sort_key)
    return report


def _run(
    policy: CompiledPolicy,
    case: Case,
    positions: Positions,
    index: int,
    locate: Locator | None,
    problems: list[Problem],
) -> CaseResult:
    position = positions.at(("cases", index))
    location = _location(case.request, locate)
    if location is None:
        failure = "an 'ip' request needs a locator (run it with `geopin policy test`)"
        return CaseResult(case.note, position, [failure])
    ctx = RequestContext(
        location=location,
        model=case.request.model,
        tenant=case.request.tenant,
        data_class=case.request.data_class,
    )
    for name in _unknown_names(policy, case):
        problems.append(Problem(positions.at(("cases", index, "expect")), "unknown-name", name))
    decision = decide(policy, ctx)
    expect = case.expect
    failures: list[str] = []

    def check(what: str, want: object, got: object) -> None:
        if want != got:
            failures.append(f"{what}: expected {want}, got {got}")

    check("action", str(expect.action), str(decision.action))
    ids = [e.id for e in decision.candidates]
    if expect.permitted is not None:
        want = _codes(places_of(expect.permitted, policy.jurisdictions))
        check("permitted", want, sorted(decision.permitted))
    if expect.endpoint is not None:
        check("endpoint", expect.endpoint, ids[0] if ids else None)
    if expect.candidates is not None:
        check("candidates", expect.candidates, ids)
    for endpoint in expect.not_endpoints or ():
        if endpoint in ids:
            failures.append(f"not_endpoints: {endpoint} is a candidate")
    if expect.rules is not None:
        check("rules", sorted(expect.rules), sorted(decision.rule_ids))
    if expect.deny_code is not None:
        check("deny_code", str(expect.deny_code), str(decision.deny_code))
    if expect.deny_rule is not None:
        check("deny_rule", expect.deny_rule, decision.deny_rule)
    return CaseResult(case.note, position, failures, explain(policy, ctx) if failures else None)


def _location(request: CaseRequest, locate: Locator | None) -> Location | None:
    if request.unknown:
        return UNKNOWN
    if request.ip is not None:
        return locate(request.ip) if locate else None
    country = request.country or (request.subdivision or "").split("-")[0]
    return Location(country, request.subdivision, LocationSource.DECLARED)


def _codes(places: PlaceSet) -> list[str]:
    return sorted(places.codes())


def _unknown_names(policy: CompiledPolicy, case: Case) -> list[str]:
    expect = case.expect
    unknown = []
    named = [expect.endpoint, *(expect.candidates or ()), *(expect.not_endpoints or ())]
    for endpoint in named:
        if endpoint is not None and endpoint not in policy.endpoints:
            unknown.append(f"unknown endpoint '{endpoint}'")
    for rule in [*(expect.rules or ()), *([expect.deny_rule] if expect.deny_rule else [])]:
        if policy.rule(rule) is None and rule != "defaults.no_match":
            unknown.append(f"unknown rule '{rule}'")
    return unknown
