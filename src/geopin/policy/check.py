"""Whole-policy validation: names resolve, codes are ISO, nothing is defined twice or in a cycle."""

from __future__ import annotations

import fnmatch

from geopin.policy.loader import Located, PolicySource
from geopin.policy.model import RuleSpec
from geopin.policy.places_iso import (
    UNKNOWN_TOKEN,
    NameKind,
    classify,
    invalid_code_hint,
    is_country,
    is_subdivision,
    looks_like_code,
)
from geopin.policy.problems import Position, Problem, Severity, did_you_mean


def check_source(source: PolicySource) -> list[Problem]:
    """Every problem that needs the whole merged policy to be seen."""
    problems: list[Problem] = []
    _check_jurisdictions(source, problems)
    served = _check_endpoints(source, problems)
    _check_models(source, served, problems)
    _check_rules(source, served, problems)
    _check_defaults(source, problems)
    return problems


def _check_jurisdictions(source: PolicySource, problems: list[Problem]) -> None:
    names = source.jurisdictions
    for name, located in names.items():
        spec = located.spec
        if name == UNKNOWN_TOKEN or is_country(name) or is_subdivision(name):
            problems.append(
                Problem(
                    located.at(key=True),
                    "shadowed-name",
                    f"jurisdiction name '{name}' reads as "
                    + ("the unknown location" if name == UNKNOWN_TOKEN else "an ISO code"),
                    hint="use a longer name such as 'EEA' or 'GB_ADEQUATE'",
                )
            )
        for i, code in enumerate(spec.countries):
            if not is_country(code):
                problems.append(_bad_code(located.at("countries", i), code, "country"))
        for i, code in enumerate(spec.subdivisions):
            if not is_subdivision(code):
                problems.append(_bad_code(located.at("subdivisions", i), code, "subdivision"))
        for i, other in enumerate(spec.include):
            if other not in names and other not in source.broken:
                problems.append(
                    Problem(
                        located.at("include", i),
                        "unknown-jurisdiction",
                        f"unknown jurisdiction '{other}'",
                        hint=did_you_mean(other, names),
                    )
                )
        if not (spec.countries or spec.subdivisions or spec.include):
            problems.append(
                Problem(
                    located.at(key=True),
                    "empty-jurisdiction",
                    f"jurisdiction '{name}' has no places",
                    Severity.WARNING,
                )
            )
    for cycle in _cycles(source):
        first = names[cycle[0]]
        problems.append(
            Problem(
                first.at("include"),
                "jurisdiction-cycle",
                "jurisdictions include each other: " + " -> ".join(cycle + [cycle[0]]),
            )
        )


def _cycles(source: PolicySource) -> list[list[str]]:
    graph = {
        n: [i for i in j.spec.include if i in source.jurisdictions]
        for n, j in source.jurisdictions.items()
    }
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def _check_endpoints(source: PolicySource, problems: list[Problem]) -> set[str]:
    seen: dict[str, Position] = {}
    served: set[str] = set()
    for located in source.endpoints:
        spec = located.spec
        if spec.id in seen:
            problems.append(
                Problem(
                    located.at("id"),
                    "duplicate-id",
                    f"endpoint '{spec.id}' is defined twice (first at {seen[spec.id]})",
                )
            )
        seen.setdefault(spec.id, located.at("id"))
        if not is_country(spec.country):
            problems.append(_bad_code(located.at("country"), spec.country, "country"))
        if spec.subdivision is not None:
            if not is_subdivision(spec.subdivision):
                problems.append(
                    _bad_code(located.at("subdivision"), spec.subdivision, "subdivision")
                )
            elif not spec.subdivision.startswith(spec.country + "-"):
                problems.append(
                    Problem(
                        located.at("subdivision"),
                        "invalid-value",
                        f"subdivision {spec.subdivision} is not in country {spec.country}",
                    )
                )
        for i, code in enumerate(spec.may_process_in):
            if not (is_country(code) or is_subdivision(code)):
                problems.append(_bad_code(located.at("may_process_in", i), code, "place"))
        if spec.kind == "azure-openai" and not spec.api_version:
            problems.append(
                Problem(
                    located.at(key=True),
                    "invalid-value",
                    f"azure-openai endpoint '{spec.id}' needs an 'api_version'",
                )
            )
        served.update(spec.models)
    return served


def _check_models(source: PolicySource, served: set[str], problems: list[Problem]) -> None:
    for name, located in source.models.items():
        if name not in served:
            problems.append(
                Problem(
                    located.at(key=True),
                    "unknown-model",
                    f"model '{name}' is served by no endpoint",
                    hint=did_you_mean(name, served),
                )
            )


def _all_rules(source: PolicySource) -> list[tuple[str | None, Located[RuleSpec]]]:
    return [(None, r) for r in source.rules] + list(source.tenant_rules())


def _check_rules(source: PolicySource, served: set[str], problems: list[Problem]) -> None:
    seen: dict[str, Position] = {}
    for tenant, located in _all_rules(source):
        rule = located.spec
        if rule.id in seen:
            problems.append(
                Problem(
                    located.at("id"),
                    "duplicate-id",
                    f"rule '{rule.id}' is defined twice (first at {seen[rule.id]})",
                )
            )
        seen.setdefault(rule.id, located.at("id"))
        if rule.from_ is not None:
            _check_places(source, located, "from", rule.from_, problems, allow_unknown=True)
        if rule.process_in is not None:
            _check_places(source, located, "process_in", rule.process_in, problems)
        if rule.tenants is not None:
            if tenant is not None:
                problems.append(
                    Problem(
                        located.at("tenants", key=True),
                        "invalid-value",
                        f"rule '{rule.id}' belongs to tenant '{tenant}' and cannot name tenants",
                    )
                )
            for i, name in enumerate(rule.tenants):
                if name not in source.tenants and name not in source.broken:
                    problems.append(
                        Problem(
                            located.at("tenants", i),
                            "unknown-tenant",
                            f"unknown tenant '{name}'",
                            hint=did_you_mean(name, source.tenants),
                        )
                    )
        for i, pattern in enumerate(rule.models or ()):
            if not any(fnmatch.fnmatchcase(m, pattern) for m in served | source.broken):
                problems.append(
                    Problem(
                        located.at("models", i),
                        "unknown-model",
                        f"model '{pattern}' is served by no endpoint",
                        hint=did_you_mean(pattern, served),
                    )
                )
        for i, name in enumerate(rule.data_classes or ()):
            _check_data_class(source, located.at("data_classes", i), name, problems)
        for key in ("from_", "tenants", "models", "data_classes"):
            if getattr(rule, key) == []:
                problems.append(
                    Problem(
                        located.at(key.rstrip("_"), key=True),
                        "never-matches",
                        f"rule '{rule.id}' can never match: '{key.rstrip('_')}' is empty",
                        Severity.WARNING,
                    )
                )


def _check_places(
    source: PolicySource,
    located: Located,
    key: str,
    names: list[str],
    problems: list[Problem],
    *,
    allow_unknown: bool = False,
) -> None:
    for i, name in enumerate(names):
        kind = classify(name, source.jurisdictions)
        if kind is NameKind.UNKNOWN and not allow_unknown:
            problems.append(
                Problem(
                    located.at(key, i),
                    "invalid-value",
                    "'unknown' is a client location, not a place to process in",
                )
            )
        elif kind is NameKind.INVALID and name not in source.broken:
            # A lower-case code ('de') is a mistyped code, not a missing jurisdiction.
            if looks_like_code(name) or invalid_code_hint(name):
                problems.append(_bad_code(located.at(key, i), name, "place"))
            else:
                problems.append(
                    Problem(
                        located.at(key, i),
                        "unknown-jurisdiction",
                        f"unknown jurisdiction '{name}'",
                        hint=did_you_mean(name, list(source.jurisdictions) + [UNKNOWN_TOKEN]),
                    )
                )


def _check_data_class(
    source: PolicySource, position: Position, name: str, problems: list[Problem]
) -> None:
    if name not in source.data_classes:
        problems.append(
            Problem(
                position,
                "unknown-data-class",
                f"unknown data class '{name}'",
                hint=did_you_mean(name, source.data_classes)
                or "declare it under the top-level 'data_classes' list",
            )
        )


def _check_defaults(source: PolicySource, problems: list[Problem]) -> None:
    if source.defaults is None:
        return
    spec = source.defaults.spec
    for key in ("unknown_location", "no_match"):
        outcome = getattr(spec, key)
        if outcome is not None and outcome.process_in is not None:
            sub = Located(outcome, source.defaults.positions, source.defaults.path + (key,))
            _check_places(source, sub, "process_in", outcome.process_in, problems)
    if spec.data_class is not None:
        _check_data_class(source, source.defaults.at("data_class"), spec.data_class, problems)


def _bad_code(position: Position, code: str, what: str) -> Problem:
    return Problem(
        position,
        "invalid-code",
        f"'{code}' is not an ISO 3166 {what} code",
        hint=invalid_code_hint(code),
    )
