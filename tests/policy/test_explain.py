"""Explanations: every rule's verdict, and why each endpoint was left out."""

from __future__ import annotations

import json

from geopin.geo.location import Location, LocationSource
from geopin.policy.engine import evaluate
from geopin.policy.explain import Exclusion, RuleTrace, explain

from .conftest import make_context, make_policy, rule


def _why(explanation) -> dict[str, tuple[bool, str]]:
    return {t.rule_id: (t.matched, t.why) for t in explanation.rules}


def test_the_explanation_carries_the_engines_decision() -> None:
    policy = make_policy()
    ctx = make_context("FR")
    explanation = explain(policy, ctx)
    assert explanation.decision == evaluate(policy, ctx)
    assert explanation.context is ctx


def test_every_rule_gets_a_verdict_and_a_reason() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("us", from_=["US"], process_in=["US"]),
            rule("small-de", models=["small"], process_in=["DE"]),
            rule("pii-de", data_classes=["pii"], process_in=["DE"]),
            rule("acme-only", tenants=["acme"], process_in=["DE"]),
        ],
        tenants={"acme": {"rules": [rule("acme-own", process_in=["DE"])]}},
    )
    explanation = explain(policy, make_context("FR"))
    assert _why(explanation) == {
        "eea": (True, "matches"),
        "us": (False, "client location FR not in the rule's 'from'"),
        "small-de": (False, "model 'gpt-4o' not matched"),
        "pii-de": (False, "data class (internal) not in pii"),
        "acme-only": (False, "tenant not in acme"),
        "acme-own": (False, "only for tenant 'acme'"),
        "defaults.unknown_location": (False, "the location is known"),
        "defaults.no_match": (False, "other rules match"),
    }
    eea = next(t for t in explanation.rules if t.rule_id == "eea")
    assert eea.effect == "process_in"
    assert eea.position == str(policy.rule("eea").position)


def test_a_rule_matched_because_of_a_declared_class_says_so() -> None:
    policy = make_policy(
        rules=[rule("eea"), rule("pii-de", data_classes=["pii"], process_in=["DE"])]
    )
    explanation = explain(policy, make_context("FR", data_class="pii"))
    assert _why(explanation)["pii-de"] == (
        True,
        "matches because the request declared data class 'pii'",
    )


def test_an_unknown_location_is_named_in_the_verdicts() -> None:
    policy = make_policy(defaults=None, rules=[rule("eea", from_=["EEA"], process_in=["EEA"])])
    explanation = explain(policy, make_context(None))
    assert explanation.rules == (
        RuleTrace(
            "eea",
            False,
            "process_in",
            "location unknown and the rule does not match 'unknown'",
            str(policy.rule("eea").position),
        ),
        RuleTrace(
            "defaults.no_match",
            True,
            "deny",
            "no rule matches this request and the policy sets no 'defaults.no_match'",
            "<built-in>",
        ),
    )


def test_every_endpoint_left_out_says_why() -> None:
    explanation = explain(make_policy(), make_context("FR"))
    assert [e.id for e in explanation.decision.candidates] == [
        "de-regional",
        "se-regional",
        "fr-central",
    ]
    assert explanation.excluded == (
        Exclusion("ie-zone", "may also process in CH, which is not permitted"),
        Exclusion("nl-edge", "does not serve 'gpt-4o'"),
        Exclusion("ch-regional", "processes in CH, which is not permitted"),
        Exclusion("us-east", "processes in US-VA, which is not permitted"),
        Exclusion("ca-qc", "processes in CA-QC, which is not permitted"),
    )


def test_a_denied_request_leaves_every_endpoint_out_for_that_reason() -> None:
    policy = make_policy(rules=[rule("no-fr", from_=["FR"], deny=True, reason="no")])
    explanation = explain(policy, make_context("FR", model="small"))
    reasons = {x.endpoint_id: x.reason for x in explanation.excluded}
    serving = {"de-regional", "fr-central", "nl-edge", "us-east"}
    assert {e for e, r in reasons.items() if r == "the request is denied (rule_deny)"} == serving
    assert {e for e, r in reasons.items() if r == "does not serve 'small'"} == (
        set(policy.endpoints) - serving
    )


def test_to_dict_is_json_with_the_whole_story() -> None:
    policy = make_policy()
    location = Location("CA", "CA-QC", LocationSource.MMDB, "GeoIP2-City 2026-11-20", False)
    ctx = make_context(location=location, tenant="acme", data_class="pii")
    data = json.loads(json.dumps(explain(policy, ctx).to_dict()))
    assert data["policy_version"] == policy.version
    assert data["location"] == {
        "country": "CA",
        "country_name": "Canada",
        "subdivision": "CA-QC",
        "subdivision_name": "Quebec",
        "source": "mmdb",
        "database": "GeoIP2-City 2026-11-20",
        "in_eu": False,
    }
    assert data["request"] == {
        "tenant": "acme",
        "model": "gpt-4o",
        "data_class": "pii",
        "effective_data_class": "pii",
    }
    assert (data["action"], data["deny_code"], data["deny_rule"]) == ("route", None, None)
    assert data["reason"] == "elsewhere"
    assert data["permitted"] == ["CA", "CH", "DE", "FR", "IE", "NL", "SE", "US"]
    assert data["prefer_tier"] == "regional"
    assert data["candidates"][0] == {
        "endpoint": "ca-qc",
        "rank": 0,
        "country": "CA",
        "subdivision": "CA-QC",
        "tier": "regional",
        "priority": 10,
        "upstream_model": "gpt-4o",
    }
    assert [c["endpoint"] for c in data["candidates"]] == [
        "ca-qc",
        "ch-regional",
        "de-regional",
        "se-regional",
        "us-east",
        "fr-central",
        "ie-zone",
    ]
    assert {r["rule"] for r in data["rules"] if r["matched"]} == {"defaults.no_match"}
    assert set(data["rules"][0]) == {"rule", "matched", "effect", "why", "at"}
    assert data["excluded"] == [{"endpoint": "nl-edge", "reason": "does not serve 'gpt-4o'"}]


def test_an_unknown_location_has_no_names() -> None:
    data = explain(make_policy(), make_context(None)).to_dict()
    assert data["location"]["country"] is None
    assert data["location"]["country_name"] is None
    assert data["location"]["source"] == "none"
    assert data["deny_rule"] == "defaults.unknown_location"
    assert data["candidates"] == []
