"""The engine's invariants over generated policies and requests.

Policies are generated as data (the dicts of YAML files), written and loaded like any other,
so the properties hold for what authors write, not for hand-built internals.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopin.policy.decision import Action, Decision, DenyCode, RequestContext
from geopin.policy.engine import decide

from .conftest import load_data, make_context

COUNTRIES = ["DE", "FR", "IE", "CH", "US", "CA", "JP"]
SUBDIVISIONS = ["CA-QC", "CA-ON", "US-VA", "US-CA"]
PLACES = COUNTRIES + SUBDIVISIONS
OUTSIDE = "BR"  # a country no generated policy names
MODELS = ["m1", "m2"]
CLASSES = ["public", "internal", "pii"]
TENANT = "acme"
NO_MATCH = "defaults.no_match"

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- generated policies ------------------------------------------------------------------


@st.composite
def _jurisdictions(draw: st.DrawFn) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for i in range(draw(st.integers(0, 3))):
        spec = {
            "countries": draw(st.lists(st.sampled_from(COUNTRIES), max_size=3, unique=True)),
            "subdivisions": draw(st.lists(st.sampled_from(SUBDIVISIONS), max_size=2, unique=True)),
            # Only earlier ones, so there is never a cycle.
            "include": draw(st.lists(st.sampled_from(sorted(out)), max_size=1)) if out else [],
        }
        if not any(spec.values()):
            spec["countries"] = [draw(st.sampled_from(COUNTRIES))]
        out[f"ZONE_{i}"] = spec
    return out


@st.composite
def _endpoint(draw: st.DrawFn, i: int) -> dict[str, Any]:
    country = draw(st.sampled_from(COUNTRIES))
    subdivisions = [s for s in SUBDIVISIONS if s.startswith(country + "-")]
    spec: dict[str, Any] = {
        "id": f"e{i}",
        "url": f"https://e{i}.example/v1",
        "kind": "openai-compatible",
        "country": country,
        "tier": draw(st.sampled_from(["edge", "regional", "central"])),
        "priority": draw(st.sampled_from([10, 20])),
        "models": {
            m: None for m in draw(st.lists(st.sampled_from(MODELS), min_size=1, unique=True))
        },
    }
    if subdivisions and draw(st.booleans()):
        spec["subdivision"] = draw(st.sampled_from(subdivisions))
    if draw(st.integers(0, 3)) == 0:
        spec["may_process_in"] = draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=2))
    return spec


@st.composite
def _rule(
    draw: st.DrawFn, rule_id: str, zones: list[str], served: list[str], owned: bool = False
) -> dict[str, Any]:
    names = PLACES + zones
    spec: dict[str, Any] = {"id": rule_id}
    if draw(st.booleans()):
        spec["from"] = draw(st.lists(st.sampled_from(names + ["unknown"]), min_size=1, max_size=3))
    if not owned and draw(st.integers(0, 4)) == 0:
        spec["tenants"] = [TENANT]
    if draw(st.integers(0, 2)) == 0:
        spec["models"] = draw(st.lists(st.sampled_from(served), min_size=1, unique=True))
    if draw(st.integers(0, 2)) == 0:
        spec["data_classes"] = draw(st.lists(st.sampled_from(CLASSES), min_size=1, unique=True))
    if draw(st.integers(0, 4)) == 0:
        spec.update(deny=True, reason=f"{rule_id} denies")
    else:
        spec["process_in"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4))
    return spec


def _outcome(draw: st.DrawFn, zones: list[str]) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["none", "deny", "process_in"]))
    if kind == "none":
        return None
    if kind == "deny":
        return {"deny": True, "reason": "default deny"}
    return {"process_in": draw(st.lists(st.sampled_from(PLACES + zones), min_size=1, max_size=4))}


@st.composite
def policies(draw: st.DrawFn, unknown_location: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sections of one valid policy."""
    zones = draw(_jurisdictions())
    names = sorted(zones)
    endpoints = [draw(_endpoint(i)) for i in range(draw(st.integers(1, 6)))]
    served = sorted({m for e in endpoints for m in e["models"]})
    rules = [draw(_rule(f"r{i}", names, served)) for i in range(draw(st.integers(0, 5)))]
    owned = [
        draw(_rule(f"t{i}", names, served, owned=True)) for i in range(draw(st.integers(0, 2)))
    ]
    defaults: dict[str, Any] = {}
    if draw(st.booleans()):
        defaults["data_class"] = "internal"
    for key in ("unknown_location", "no_match"):
        outcome = _outcome(draw, names)
        if outcome is not None:
            defaults[key] = outcome
    if unknown_location is not None:
        defaults["unknown_location"] = unknown_location
    data: dict[str, Any] = {
        "jurisdictions": zones,
        "endpoints": endpoints,
        "data_classes": CLASSES,
        "rules": rules,
        "tenants": {TENANT: {"rules": owned}},
        "defaults": defaults,
    }
    if "m2" in served and draw(st.booleans()):
        data["models"] = {"m2": {"prefer_tier": "edge"}}
    return data


@st.composite
def contexts(draw: st.DrawFn) -> RequestContext:
    where = draw(st.sampled_from(COUNTRIES + SUBDIVISIONS + [OUTSIDE, None]))
    fields = {
        "model": draw(st.sampled_from(MODELS + ["m3"])),
        "tenant": draw(st.sampled_from([None, TENANT, "other"])),
        "data_class": draw(st.sampled_from([None, *CLASSES])),
    }
    if where is not None and "-" in where:
        return make_context(subdivision=where, **fields)
    return make_context(where, **fields)


def _grid() -> list[RequestContext]:
    """Every request the generated policies can tell apart: each property checks them all."""
    out = []
    for where in COUNTRIES + SUBDIVISIONS + [OUTSIDE, None]:
        for model in MODELS + ["m3"]:
            for tenant in (None, TENANT, "other"):
                for data_class in (None, *CLASSES):
                    fields = {"model": model, "tenant": tenant, "data_class": data_class}
                    if where is not None and "-" in where:
                        out.append(make_context(subdivision=where, **fields))
                    else:
                        out.append(make_context(where, **fields))
    return out


GRID = _grid()


# --- an independent reading of places, from the generated data ---------------------------


def _expand(data: dict[str, Any], names: tuple[str, ...] | list[str]) -> set[str]:
    zones = data["jurisdictions"]
    codes: set[str] = set()
    for name in names:
        if name in zones:
            spec = zones[name]
            codes |= set(spec["countries"]) | set(spec["subdivisions"])
            codes |= _expand(data, spec["include"])
        else:
            codes.add(name)
    return codes


def _within(codes: set[str] | tuple[str, ...], country: str, subdivision: str | None) -> bool:
    return country in codes or (subdivision is not None and subdivision in codes)


def _processes_within(endpoint: Any, codes: set[str] | tuple[str, ...]) -> bool:
    if not _within(codes, endpoint.country, endpoint.subdivision):
        return False
    return all(_within(codes, m[:2], m if "-" in m else None) for m in endpoint.may_process_in)


def _at_least_as_strict(narrow: Decision, wide: Decision) -> bool:
    """``narrow`` permits nothing that ``wide`` does not."""
    if wide.action is Action.DENY:
        return narrow.action is Action.DENY
    if narrow.action is Action.DENY:
        return True
    places = all(_within(wide.permitted, c[:2], c if "-" in c else None) for c in narrow.permitted)
    endpoints = {e.id for e in narrow.candidates} <= {e.id for e in wide.candidates}
    return places and endpoints


# --- the properties ----------------------------------------------------------------------


@SETTINGS
@given(policies())
def test_candidates_are_exactly_the_endpoints_inside_every_matching_constraint(
    data: dict[str, Any],
) -> None:
    policy = load_data(data)
    for ctx in GRID:
        decision = decide(policy, ctx)
        if decision.deny_code is DenyCode.UNKNOWN_MODEL:
            assert ctx.model not in policy.models
            continue
        constraints = [
            _expand(data, m.places) for m in decision.matched if m.effect == "process_in"
        ]
        for code in decision.permitted:
            assert all(_within(c, code[:2], code if "-" in code else None) for c in constraints)
        if not decision.routed:
            assert decision.candidates == ()
            continue
        for endpoint in decision.candidates:
            assert ctx.model in endpoint.models
            assert _processes_within(endpoint, decision.permitted)
            assert all(_processes_within(endpoint, c) for c in constraints)
        compliant = [
            e.id
            for e in policy.serving[ctx.model]
            if all(_processes_within(e, c) for c in constraints)
        ]
        assert sorted(e.id for e in decision.candidates) == sorted(compliant)
        assert list(decision.candidate_ranks) == sorted(decision.candidate_ranks)


@SETTINGS
@given(policies(), contexts(), st.data())
def test_a_matching_deny_always_wins(
    data: dict[str, Any], ctx: RequestContext, draw: st.DataObject
) -> None:
    # A deny rule whose every condition holds for ctx, by construction.
    deny: dict[str, Any] = {"id": "zz-deny", "deny": True, "reason": "refused"}
    loc = ctx.location
    if draw.draw(st.booleans()):
        deny["from"] = [loc.subdivision or loc.country or "unknown"]
    served = {m for e in data["endpoints"] for m in e["models"]}
    if ctx.model in served and draw.draw(st.booleans()):
        deny["models"] = [ctx.model]
    if ctx.tenant == TENANT and draw.draw(st.booleans()):
        deny["tenants"] = [TENANT]
    if ctx.data_class and draw.draw(st.booleans()):
        deny["data_classes"] = [ctx.data_class]
    decision = decide(load_data({**data, "rules": data["rules"] + [deny]}), ctx)
    assert decision.action is Action.DENY
    if decision.deny_code is not DenyCode.UNKNOWN_MODEL:
        assert decision.deny_code is DenyCode.RULE
        assert "zz-deny" in decision.rule_ids
        denies = [m.rule_id for m in decision.matched if m.effect == "deny"]
        assert decision.deny_rule == min(denies)


@SETTINGS
@given(policies(), st.data())
def test_adding_a_rule_never_widens_unless_it_displaces_no_match(
    data: dict[str, Any], draw: st.DataObject
) -> None:
    names = sorted(data["jurisdictions"])
    served = sorted({m for e in data["endpoints"] for m in e["models"]})
    extra = draw.draw(_rule("zz-added", names, served))
    before = load_data(data)
    after = load_data({**data, "rules": data["rules"] + [extra]})
    for ctx in GRID:
        old, new = decide(before, ctx), decide(after, ctx)
        # By design a rule that matches where none did replaces defaults.no_match (or the
        # fail-closed deny): that is how a policy permits anything at all.
        if NO_MATCH in old.rule_ids and NO_MATCH not in new.rule_ids:
            continue
        assert _at_least_as_strict(new, old)


@SETTINGS
@given(policies(), st.randoms(use_true_random=False))
def test_rule_order_and_the_split_into_files_never_change_a_decision(
    data: dict[str, Any], rnd: random.Random
) -> None:
    shuffled = dict(data)
    for key in ("rules", "endpoints"):
        shuffled[key] = rnd.sample(data[key], len(data[key]))
    owned = data["tenants"][TENANT]["rules"]
    shuffled["tenants"] = {TENANT: {"rules": rnd.sample(owned, len(owned))}}
    files: list[dict[str, Any]] = [{} for _ in range(3)]
    for key, value in shuffled.items():
        if key in ("rules", "endpoints"):
            for item in value:
                files[rnd.randrange(3)].setdefault(key, []).append(item)
        else:
            files[rnd.randrange(3)][key] = value
    whole = load_data(data)
    split = load_data(*[f for f in files if f])
    for ctx in GRID:
        one, other = decide(whole, ctx), decide(split, ctx)
        assert replace(one, policy_version="") == replace(other, policy_version="")


@SETTINGS
@given(policies())
def test_declaring_a_data_class_never_widens_the_decision(data: dict[str, Any]) -> None:
    policy = load_data(data)
    for ctx in GRID:
        if ctx.data_class is None:
            plain = decide(policy, ctx)
            for declared in CLASSES:
                assert _at_least_as_strict(decide(policy, replace(ctx, data_class=declared)), plain)


@SETTINGS
@given(policies())
def test_a_tenants_own_rules_never_widen_the_decision(data: dict[str, Any]) -> None:
    with_rules = load_data(data)
    without_rules = load_data({**data, "tenants": {TENANT: {"rules": []}}})
    for ctx in GRID:
        assert _at_least_as_strict(decide(with_rules, ctx), decide(without_rules, ctx))


@SETTINGS
@given(policies(unknown_location={"deny": True, "reason": "unknown"}))
def test_an_unknown_location_is_always_denied_when_the_policy_says_so(
    data: dict[str, Any],
) -> None:
    policy = load_data(data)
    for ctx in GRID:
        if ctx.location.country is None:
            decision = decide(policy, ctx)
            assert decision.action is Action.DENY
            if decision.deny_code is not DenyCode.UNKNOWN_MODEL:
                assert decision.deny_code is DenyCode.RULE
                assert "defaults.unknown_location" in decision.rule_ids


@SETTINGS
@given(policies())
def test_a_call_naming_no_model_goes_only_where_a_call_naming_any_model_could(
    data: dict[str, Any],
) -> None:
    policy = load_data(data)
    for ctx in GRID:
        if ctx.model != MODELS[0]:
            continue  # the grid's other models repeat the same contexts
        unnamed = decide(policy, replace(ctx, model=None))
        assert unnamed.deny_code is not DenyCode.UNKNOWN_MODEL
        for model in sorted(policy.models):
            named = decide(policy, replace(ctx, model=model))
            if named.deny_code in (DenyCode.RULE, DenyCode.NO_PERMITTED_PLACE):
                # Any model's deny denies it, and an empty intersection stays empty.
                assert unnamed.action is Action.DENY, (model, named.reason, unnamed.reason)
                continue
            if unnamed.routed and named.permitted != ("*",):
                for code in unnamed.permitted:
                    assert _within(set(named.permitted), code[:2], code if "-" in code else None)
        if unnamed.routed:
            compliant = [e.id for e in policy.endpoints.values()
                         if _processes_within(e, unnamed.permitted)]  # fmt: skip
            assert sorted(e.id for e in unnamed.candidates) == sorted(compliant)
        elif unnamed.deny_code is DenyCode.RULE:
            # A deny some model's call meets, and only then.
            assert any(
                decide(policy, replace(ctx, model=m)).deny_code is DenyCode.RULE
                for m in policy.models
            )
