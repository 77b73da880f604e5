"""Why a decision is what it is: every rule's verdict and why each endpoint was left out."""

from __future__ import annotations

from dataclasses import dataclass

from geopin.policy.compile import CompiledPolicy, CompiledRule
from geopin.policy.decision import Decision, RequestContext
from geopin.policy.engine import evaluate, matching_rules
from geopin.policy.places_iso import country_name, subdivision_name


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule_id: str
    matched: bool
    effect: str
    why: str
    position: str


@dataclass(frozen=True, slots=True)
class Exclusion:
    endpoint_id: str
    reason: str


@dataclass(frozen=True)
class Explanation:
    context: RequestContext
    decision: Decision
    rules: tuple[RuleTrace, ...]
    excluded: tuple[Exclusion, ...]

    def to_dict(self) -> dict:
        loc = self.context.location
        d = self.decision
        return {
            "policy_version": d.policy_version,
            "location": {
                "country": loc.country,
                "country_name": country_name(loc.country) if loc.country else None,
                "subdivision": loc.subdivision,
                "subdivision_name": subdivision_name(loc.subdivision) if loc.subdivision else None,
                "source": str(loc.source),
                "database": loc.database,
                "in_eu": loc.in_eu,
            },
            "request": {
                "tenant": self.context.tenant,
                "model": self.context.model,
                "data_class": self.context.data_class,
                "effective_data_class": d.data_class,
            },
            "action": str(d.action),
            "deny_code": str(d.deny_code) if d.deny_code else None,
            "deny_rule": d.deny_rule,
            "reason": d.reason,
            "legal_basis": d.legal_basis,
            "permitted": list(d.permitted),
            "prefer_tier": str(d.prefer_tier),
            "candidates": [
                {
                    "endpoint": e.id,
                    "rank": rank,
                    "country": e.country,
                    "subdivision": e.subdivision,
                    "tier": str(e.tier),
                    "priority": e.priority,
                    "upstream_model": (
                        e.models.get(self.context.model) if self.context.model else None
                    ),
                }
                for e, rank in zip(d.candidates, d.candidate_ranks, strict=True)
            ],
            "rules": [
                {
                    "rule": t.rule_id,
                    "matched": t.matched,
                    "effect": t.effect,
                    "why": t.why,
                    "at": t.position,
                }
                for t in self.rules
            ],
            "excluded": [{"endpoint": x.endpoint_id, "reason": x.reason} for x in self.excluded],
        }


def explain(policy: CompiledPolicy, ctx: RequestContext) -> Explanation:
    """The decision for ``ctx`` with the whole trace (slower than ``decide``; for people)."""
    decision = evaluate(policy, ctx)
    applied = {r.id for r in matching_rules(policy, ctx)} if decision.matched else set()
    traces = [_trace(policy, rule, ctx, rule.id in applied) for rule in policy.all_rules()]
    if "defaults.no_match" in applied and policy.no_match_rule is None:
        traces.append(RuleTrace("defaults.no_match", True, "deny", decision.reason, "<built-in>"))
    return Explanation(ctx, decision, tuple(traces), tuple(_exclusions(policy, ctx, decision)))


def _trace(policy: CompiledPolicy, rule: CompiledRule, ctx: RequestContext, matched: bool):
    if matched:
        why = "matches"
        if (
            rule.data_classes is not None
            and ctx.data_class in rule.data_classes
            and (policy.default_data_class not in rule.data_classes)
        ):
            why = f"matches because the request declared data class '{ctx.data_class}'"
    else:
        why = _why_not(policy, rule, ctx)
    return RuleTrace(rule.id, matched, rule.effect, why, str(rule.position))


def _why_not(policy: CompiledPolicy, rule: CompiledRule, ctx: RequestContext) -> str:
    loc = ctx.location
    if rule.id == "defaults.unknown_location":
        return "the location is known"
    if rule.id == "defaults.no_match":
        return "other rules match"
    if rule.owner is not None and rule.owner != ctx.tenant:
        return f"only for tenant '{rule.owner}'"
    if rule.tenants is not None and ctx.tenant not in rule.tenants:
        return "tenant not in " + ", ".join(sorted(rule.tenants))
    if rule.models is not None and ctx.model is None and not rule.models:
        return "its models match no model of the catalogue"
    if rule.models is not None and ctx.model is not None and ctx.model not in rule.models:
        return f"model '{ctx.model}' not matched"
    if rule.data_classes is not None:
        classes = {c for c in (policy.default_data_class, ctx.data_class) if c}
        if rule.data_classes.isdisjoint(classes):
            shown = ", ".join(sorted(classes)) or "none"
            return f"data class ({shown}) not in " + ", ".join(sorted(rule.data_classes))
    if rule.from_places is not None:
        if loc.country is None:
            return "location unknown and the rule does not match 'unknown'"
        where = loc.subdivision or loc.country
        return f"client location {where} not in the rule's 'from'"
    return "does not match"


def _exclusions(policy: CompiledPolicy, ctx: RequestContext, decision: Decision):
    chosen = {e.id for e in decision.candidates}
    permitted = decision.permitted_places()
    for endpoint in policy.endpoints.values():
        if endpoint.id in chosen:
            continue
        if ctx.model is not None and ctx.model not in endpoint.models:
            reason = f"does not serve '{ctx.model}'"
        elif decision.deny_code is not None and not decision.permitted:
            reason = f"the request is denied ({decision.deny_code})"
        elif not permitted.contains(endpoint.country, endpoint.subdivision):
            where = endpoint.subdivision or endpoint.country
            reason = f"processes in {where}, which is not permitted"
        else:
            outside = [
                c
                for c in endpoint.may_process_in
                if not permitted.contains(c[:2], c if len(c) > 2 else None)
            ]
            reason = f"may also process in {', '.join(outside)}, which is not permitted"
        yield Exclusion(endpoint.id, reason)
