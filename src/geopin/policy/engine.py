"""The decision: a pure function of the compiled policy and the request's facts.

Semantics (docs/policy-language.md states them for authors):
- every matching rule applies, and rule order never matters;
- the permitted places are the intersection of every matching ``process_in``;
- a matching deny wins over everything;
- the policy's default data class always applies; a declared class only adds rules, so it can
  make a decision stricter, never looser;
- ``defaults.unknown_location`` applies whenever the location is unknown; ``defaults.no_match``
  applies when no rule matches the request as it would be without a declared class and without
  its tenant's own rules, and without it such a request is denied (fail closed). So neither a
  declared class nor a tenant's rules can escape to a looser default: they only narrow;
- a call that names no model (``RequestContext.model`` None: the Files API, a stored response)
  is decided under every rule that applies to the same request naming any model of the
  catalogue, so it may go only where a call naming any one of them could, and any model's deny
  denies it; its candidates are the permitted endpoints whatever models they serve.
"""

from __future__ import annotations

from dataclasses import replace

from geopin.geo.location import Location
from geopin.policy.compile import NO_MATCH_RULE, CompiledPolicy, CompiledRule
from geopin.policy.decision import (
    Action,
    Decision,
    DenyCode,
    Endpoint,
    RequestContext,
    RuleMatch,
    Tier,
)
from geopin.policy.places import ANYWHERE, PlaceSet
from geopin.policy.problems import Position

CACHE_LIMIT = 100_000
_TIERS = (Tier.EDGE, Tier.REGIONAL, Tier.CENTRAL)

_IMPLICIT_NO_MATCH = CompiledRule(
    id=NO_MATCH_RULE,
    position=Position("<built-in>"),  # written nowhere: the fail-closed default
    effect="deny",
    places=PlaceSet(),
    reason="no rule matches this request and the policy sets no 'defaults.no_match'",
)


def decide(policy: CompiledPolicy, ctx: RequestContext) -> Decision:
    """Decide where ``ctx`` may be processed. Memoised: decisions are immutable and shared."""
    loc = ctx.location
    key = (loc.country, loc.subdivision, ctx.tenant, ctx.model, ctx.data_class)
    cache = policy.cache
    decision = cache.get(key)
    if decision is None:
        decision = evaluate(policy, ctx)
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = decision
    return decision


def rule_matches(rule: CompiledRule, ctx: RequestContext, classes: frozenset[str]) -> bool:
    """Does ``rule`` match ``ctx`` when the request carries the data ``classes``?"""
    if rule.owner is not None and rule.owner != ctx.tenant:
        return False
    if rule.tenants is not None and ctx.tenant not in rule.tenants:
        return False
    if rule.models is not None and ctx.model not in rule.models:
        return False
    if rule.data_classes is not None and rule.data_classes.isdisjoint(classes):
        return False
    if rule.from_places is None:
        return True
    loc = ctx.location
    if loc.country is None:
        return rule.from_unknown
    return rule.from_places.contains(loc.country, loc.subdivision)


def matching_rules(policy: CompiledPolicy, ctx: RequestContext) -> list[CompiledRule]:
    """Every rule that applies to ``ctx``, defaults included, sorted by id.

    For a call that names no model: every rule that applies to it naming any model the
    catalogue serves (so their places intersect and any of their denies wins).
    """
    if ctx.model is None and policy.serving:
        found: dict[str, CompiledRule] = {}
        for model in policy.serving:
            for rule in _matching_rules(policy, replace(ctx, model=model)):
                found.setdefault(rule.id, rule)
        return sorted(found.values(), key=lambda r: r.id)
    return _matching_rules(policy, ctx)


def _matching_rules(policy: CompiledPolicy, ctx: RequestContext) -> list[CompiledRule]:
    base = frozenset({policy.default_data_class} if policy.default_data_class else ())
    full = base | {ctx.data_class} if ctx.data_class else base
    # What the policy itself says; a declared class and a tenant's own rules only add to it.
    baseline = [r for r in policy.rules if r.owner is None and rule_matches(r, ctx, base)]
    extra = [r for r in policy.rules if r not in baseline and rule_matches(r, ctx, full)]
    if ctx.location.country is None and policy.unknown_location_rule is not None:
        baseline.append(policy.unknown_location_rule)
    if not baseline:
        baseline.append(policy.no_match_rule or _IMPLICIT_NO_MATCH)
    return sorted(baseline + extra, key=lambda r: r.id)


def evaluate(policy: CompiledPolicy, ctx: RequestContext) -> Decision:
    """The decision, computed afresh (``decide`` memoises it)."""
    prefer = policy.default_tier
    if ctx.model is not None:
        prefer = policy.prefer_tier.get(ctx.model, prefer)
    data_class = ctx.data_class or policy.default_data_class
    serving = (
        tuple(policy.endpoints.values()) if ctx.model is None else policy.serving.get(ctx.model)
    )
    if serving is None:
        return Decision(
            action=Action.DENY,
            permitted=(),
            candidates=(),
            candidate_ranks=(),
            matched=(),
            reason=f"no endpoint serves the model '{ctx.model}'",
            deny_code=DenyCode.UNKNOWN_MODEL,
            policy_version=policy.version,
            prefer_tier=prefer,
            data_class=data_class,
        )
    rules = matching_rules(policy, ctx)
    matched = tuple(RuleMatch(r.id, r.effect, r.place_names) for r in rules)
    denies = [r for r in rules if r.deny]
    if denies:
        first = denies[0]
        return Decision(
            action=Action.DENY,
            permitted=(),
            candidates=(),
            candidate_ranks=(),
            matched=matched,
            reason=first.reason or f"denied by rule '{first.id}'",
            legal_basis=first.legal_basis,
            deny_code=DenyCode.RULE,
            deny_rule=first.id,
            policy_version=policy.version,
            prefer_tier=prefer,
            data_class=data_class,
        )
    permitted = ANYWHERE
    for rule in rules:
        permitted = permitted.intersect(rule.places)
    constraining = [r for r in rules if r.effect == "process_in"]
    legal = _join(r.legal_basis for r in constraining)
    if permitted.empty:
        return Decision(
            action=Action.DENY,
            permitted=(),
            candidates=(),
            candidate_ranks=(),
            matched=matched,
            reason="the matching rules "
            + ", ".join(r.id for r in constraining)
            + " permit no place in common",
            legal_basis=legal,
            deny_code=DenyCode.NO_PERMITTED_PLACE,
            deny_rule=constraining[-1].id if constraining else None,
            policy_version=policy.version,
            prefer_tier=prefer,
            data_class=data_class,
        )
    codes = permitted.codes()
    candidates = [e for e in serving if e.processes_within(permitted)]
    if not candidates:
        return Decision(
            action=Action.DENY,
            permitted=codes,
            candidates=(),
            candidate_ranks=(),
            matched=matched,
            reason=f"no endpoint{_serving(ctx.model)} processes in a permitted place "
            f"({_short(codes)})",
            legal_basis=legal,
            deny_code=DenyCode.NO_COMPLIANT_ENDPOINT,
            deny_rule=constraining[-1].id if constraining else None,
            policy_version=policy.version,
            prefer_tier=prefer,
            data_class=data_class,
        )
    ordered, ranks = rank_candidates(candidates, prefer, ctx.location)
    return Decision(
        action=Action.ROUTE,
        permitted=codes,
        candidates=ordered,
        candidate_ranks=ranks,
        matched=matched,
        reason=_join(r.reason for r in constraining)
        or "permitted by " + ", ".join(r.id for r in constraining),
        legal_basis=legal,
        policy_version=policy.version,
        prefer_tier=prefer,
        data_class=data_class,
    )


def rank_key(endpoint: Endpoint, prefer: Tier, location: Location) -> tuple[int, int, int, int]:
    """Policy preference: the preferred tier (then the nearest other tier), then priority,
    then locality (the client's own subdivision, then its country, then elsewhere)."""
    tier = _TIERS.index(endpoint.tier)
    distance = abs(tier - _TIERS.index(prefer))
    if location.subdivision is not None and endpoint.subdivision == location.subdivision:
        locality = 0
    elif location.country is not None and endpoint.country == location.country:
        locality = 1
    else:
        locality = 2
    return (distance, tier, endpoint.priority, locality)


def rank_candidates(
    candidates: list[Endpoint], prefer: Tier, location: Location
) -> tuple[tuple[Endpoint, ...], tuple[int, ...]]:
    keyed = sorted((rank_key(e, prefer, location), e.id, e) for e in candidates)
    ranks: list[int] = []
    previous = None
    for key, _, _ in keyed:
        if key != previous:
            ranks.append(len(set(ranks)))
            previous = key
        else:
            ranks.append(ranks[-1])
    return tuple(e for _, _, e in keyed), tuple(ranks)


def _serving(model: str | None) -> str:
    return "" if model is None else f" serving '{model}'"


def _join(texts) -> str | None:
    seen: list[str] = []
    for text in texts:
        if text and text not in seen:
            seen.append(text)
    return "; ".join(seen) or None


def _short(codes: tuple[str, ...], limit: int = 8) -> str:
    if len(codes) <= limit:
        return ", ".join(codes)
    return ", ".join(codes[:limit]) + f", and {len(codes) - limit} more"
