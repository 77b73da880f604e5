"""Warnings about what a valid policy leaves uncovered: clients left with no compliant endpoint."""

from __future__ import annotations

from collections import defaultdict

from geopin.geo.location import Location, LocationSource
from geopin.policy.compile import CompiledPolicy
from geopin.policy.decision import DenyCode, RequestContext
from geopin.policy.engine import evaluate
from geopin.policy.loader import PolicySource
from geopin.policy.places_iso import all_countries
from geopin.policy.problems import Position, Problem, Severity

OTHER = "other countries"
UNKNOWN = "unknown locations"


def coverage_warnings(policy: CompiledPolicy, source: PolicySource) -> list[Problem]:
    """Warn for every (clients, model) pair that the policy routes nowhere by accident.

    Deny rules are intended refusals and are not reported; a request left with no compliant
    endpoint is. Locations are those the policy names, one country it names nowhere, and the
    unknown location; tenants are every tenant and no tenant.
    """
    gaps: dict[tuple[str | None, str, str], str | None] = {}  # (tenant, model, label) -> rule
    baseline: set[tuple[str, str]] = set()
    samples = _sample_locations(policy)
    for tenant in [None, *sorted(policy.tenants)]:
        for model in sorted(policy.serving):
            for label, location in samples:
                ctx = RequestContext(location=location, model=model, tenant=tenant)
                decision = evaluate(policy, ctx)
                if decision.deny_code not in (
                    DenyCode.NO_COMPLIANT_ENDPOINT,
                    DenyCode.NO_PERMITTED_PLACE,
                ):
                    continue
                if tenant is None:
                    baseline.add((model, label))
                elif (model, label) in baseline:
                    continue  # already reported for every client; no need to repeat per tenant
                gaps[(tenant, model, label)] = decision.deny_rule
    # One warning per tenant, rule and set of locations, naming every model it leaves out.
    by_rule: dict[tuple[str | None, str | None, str], list[str]] = defaultdict(list)
    labels_of: dict[tuple[str | None, str, str | None], list[str]] = defaultdict(list)
    for (tenant, model, label), rule_id in gaps.items():
        labels_of[(tenant, model, rule_id)].append(label)
    for (tenant, model, rule_id), labels in labels_of.items():
        by_rule[(tenant, rule_id, _describe(policy, labels))].append(model)
    problems = []
    for (tenant, rule_id, where), models in sorted(by_rule.items(), key=str):
        rule = policy.rule(rule_id) if rule_id else None
        position = rule.position if rule else Position(policy.files[0] if policy.files else "")
        who = f"tenant '{tenant}': " if tenant else ""
        problems.append(
            Problem(
                position,
                "no-compliant-endpoint",
                f"{who}clients in {where} asking for {', '.join(sorted(models))} "
                "have no compliant endpoint",
                Severity.WARNING,
                hint=f"rule '{rule_id}' leaves no endpoint serving them" if rule_id else None,
            )
        )
    return problems


def _sample_locations(policy: CompiledPolicy) -> list[tuple[str, Location]]:
    countries: set[str] = set()
    subdivisions: set[str] = set()
    for rule in policy.all_rules():
        if rule.from_places is not None:
            countries |= rule.from_places.countries
            subdivisions |= rule.from_places.subdivisions
    for places in policy.jurisdictions.values():
        countries |= places.countries
        subdivisions |= places.subdivisions
    samples = [(c, Location(c, source=LocationSource.DECLARED)) for c in sorted(countries)]
    for sub in sorted(subdivisions):
        samples.append((sub, Location(sub.split("-")[0], sub, LocationSource.DECLARED)))
    elsewhere = sorted(all_countries() - countries)
    if elsewhere:
        samples.append((OTHER, Location(elsewhere[0], source=LocationSource.DECLARED)))
    samples.append((UNKNOWN, Location(None)))
    return samples


def _describe(policy: CompiledPolicy, labels: list[str]) -> str:
    """Name the failing locations by the largest jurisdictions they cover completely."""
    left = set(labels)
    named: list[str] = []
    by_size = sorted(policy.jurisdictions.items(), key=lambda kv: -len(kv[1].countries))
    for name, places in by_size:
        if places.countries and places.countries <= left:
            named.append(name)
            left -= places.countries
    return ", ".join(named + sorted(left))
