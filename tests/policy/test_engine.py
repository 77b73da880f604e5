"""The decision: each semantic rule of the engine on small policies, ranks and deny codes."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from geopin.geo.location import Location, LocationSource
from geopin.policy import engine
from geopin.policy.decision import Action, Decision, DenyCode, RuleMatch, Tier
from geopin.policy.engine import decide, evaluate

from .conftest import base_policy, endpoint, make_context, make_policy, rule

NO_MATCH = "defaults.no_match"
UNKNOWN_LOCATION = "defaults.unknown_location"


def _ids(decision: Decision) -> list[str]:
    return [e.id for e in decision.candidates]


def _same(decision: Decision) -> Decision:
    """The decision without the policy version, which changes with any byte of the files."""
    return replace(decision, policy_version="")


# --- every matching rule applies, as an intersection -------------------------------------


def test_every_matching_rule_applies_and_the_permitted_places_are_their_intersection() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"], legal_basis="GDPR"),
            rule("de-or-us", models=["gpt-4o"], process_in=["DE", "US"], legal_basis="contract"),
        ]
    )
    decision = decide(policy, make_context("FR"))
    assert decision.action is Action.ROUTE
    assert decision.rule_ids == ("de-or-us", "eea")
    assert decision.permitted == ("DE",)
    assert _ids(decision) == ["de-regional"]
    assert decision.legal_basis == "contract; GDPR"


def test_a_rule_that_does_not_match_has_no_effect() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("us", from_=["US"], process_in=["US"]),
        ]
    )
    decision = decide(policy, make_context("FR"))
    assert decision.rule_ids == ("eea",)
    assert decision.permitted == ("DE", "FR", "IE", "NL", "SE")


def test_rule_conditions_must_all_match() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("gpt-in-de", from_=["FR"], models=["gpt-*"], process_in=["DE"]),
        ]
    )
    assert decide(policy, make_context("FR")).permitted == ("DE",)
    assert decide(policy, make_context("FR", model="small")).rule_ids == ("eea",)
    assert decide(policy, make_context("NL")).rule_ids == ("eea",)


def test_a_matching_deny_wins_over_everything() -> None:
    policy = make_policy(
        rules=[
            rule("a-eea", from_=["EEA"], process_in=["EEA"]),
            rule("z-no-france", from_=["FR"], deny=True, reason="not in France", legal_basis="law"),
        ]
    )
    decision = decide(policy, make_context("FR"))
    assert decision.action is Action.DENY
    assert (decision.deny_code, decision.deny_rule) == (DenyCode.RULE, "z-no-france")
    assert (decision.reason, decision.legal_basis) == ("not in France", "law")
    assert (decision.permitted, decision.candidates, decision.candidate_ranks) == ((), (), ())
    assert decision.matched == (
        RuleMatch("a-eea", "process_in", ("EEA",)),
        RuleMatch("z-no-france", "deny", ()),
    )
    assert decide(policy, make_context("DE")).routed


def test_of_several_denies_the_first_by_id_is_named() -> None:
    policy = make_policy(
        rules=[rule("m-deny", deny=True, reason="m"), rule("b-deny", deny=True, reason="b")]
    )
    decision = decide(policy, make_context("FR"))
    assert (decision.deny_rule, decision.reason) == ("b-deny", "b")
    assert decision.rule_ids == ("b-deny", "m-deny")


def test_rule_order_never_matters() -> None:
    rules = [
        rule("eea", from_=["EEA"], process_in=["EEA", "CH"]),
        rule("gpt", models=["gpt-4o"], process_in=["EEA", "NORTH_AMERICA", "CH"]),
        rule("no-se", from_=["SE"], deny=True, reason="no"),
    ]
    contexts = [make_context(c) for c in ("FR", "SE", "US", "JP")] + [make_context(None)]
    expected = None
    for order in itertools.permutations(rules):
        policy = make_policy(rules=list(order))
        decisions = [_same(decide(policy, ctx)) for ctx in contexts]
        expected = expected or decisions
        assert decisions == expected


# --- data classes ------------------------------------------------------------------------


def test_the_default_data_class_always_applies() -> None:
    policy = make_policy(
        rules=[rule("internal-in-eea", data_classes=["internal"], process_in=["EEA"])],
        defaults={"data_class": "internal", "no_match": {"process_in": ["NORTH_AMERICA"]}},
    )
    for declared in (None, "public", "pii", "internal"):
        decision = decide(policy, make_context("US", data_class=declared))
        assert decision.rule_ids == ("internal-in-eea",)
        assert decision.data_class == (declared or "internal")


def test_a_declared_class_adds_rules_and_so_only_narrows() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("pii-in-de", data_classes=["pii"], process_in=["DE"]),
        ]
    )
    plain = decide(policy, make_context("FR"))
    pii = decide(policy, make_context("FR", data_class="pii"))
    assert plain.rule_ids == ("eea",)
    assert pii.rule_ids == ("eea", "pii-in-de")
    assert (plain.permitted, pii.permitted) == (("DE", "FR", "IE", "NL", "SE"), ("DE",))


def test_a_declared_class_cannot_escape_to_a_looser_no_match() -> None:
    us_pii = rule("us-pii", from_=["US"], data_classes=["pii"], process_in=["US"])
    policy = make_policy(
        rules=[us_pii],
        defaults={"data_class": "internal", "no_match": {"process_in": ["EEA", "NORTH_AMERICA"]}},
    )
    plain = decide(policy, make_context("US"))
    pii = decide(policy, make_context("US", data_class="pii"))
    assert plain.rule_ids == (NO_MATCH,)
    assert pii.rule_ids == (NO_MATCH, "us-pii")
    assert pii.permitted == ("US",)


def test_a_declared_class_cannot_escape_a_fail_closed_policy() -> None:
    policy = make_policy(
        rules=[rule("us-pii", from_=["US"], data_classes=["pii"], process_in=["US"])],
        defaults={"data_class": "internal"},
    )
    decision = decide(policy, make_context("US", data_class="pii"))
    assert decision.action is Action.DENY
    assert (decision.deny_code, decision.deny_rule) == (DenyCode.RULE, NO_MATCH)
    assert decision.rule_ids == (NO_MATCH, "us-pii")


def test_without_a_default_class_a_class_rule_needs_a_declared_class() -> None:
    policy = make_policy(
        rules=[rule("eea"), rule("pii-de", data_classes=["pii"], process_in=["DE"])],
        defaults=None,
    )
    assert decide(policy, make_context("FR")).rule_ids == ("eea",)
    assert decide(policy, make_context("FR")).data_class is None
    assert decide(policy, make_context("FR", data_class="pii")).rule_ids == ("eea", "pii-de")


# --- unknown locations and requests no rule matches --------------------------------------


def test_unknown_location_deny_applies_whenever_the_location_is_unknown() -> None:
    policy = make_policy(
        rules=[
            rule("anywhere", process_in=["EEA"]),
            rule("unknown-to-eea", from_=["unknown"], process_in=["EEA"]),
        ]
    )
    decision = decide(policy, make_context(None))
    assert decision.action is Action.DENY
    assert (decision.deny_code, decision.deny_rule) == (DenyCode.RULE, UNKNOWN_LOCATION)
    assert decision.reason == "location unknown"
    assert decision.rule_ids == ("anywhere", UNKNOWN_LOCATION, "unknown-to-eea")


def test_unknown_location_can_constrain_instead_of_deny() -> None:
    policy = make_policy(
        rules=[rule("anywhere", process_in=["EEA"]), rule("eea", from_=["EEA"], process_in=["FR"])],
        defaults={"unknown_location": {"process_in": ["DE", "US"], "reason": "unknown: DE"}},
    )
    decision = decide(policy, make_context(None))
    assert decision.rule_ids == ("anywhere", UNKNOWN_LOCATION)  # 'from: [EEA]' does not match
    assert decision.permitted == ("DE",)
    assert decision.reason == "unknown: DE"
    assert _ids(decision) == ["de-regional"]


def test_rules_from_unknown_match_only_unknown_locations() -> None:
    policy = make_policy(
        rules=[rule("eea"), rule("unknown-de", from_=["unknown"], process_in=["DE"])],
        defaults=None,
    )
    assert decide(policy, make_context(None)).permitted == ("DE",)
    assert decide(policy, make_context("FR")).rule_ids == ("eea",)


def test_no_match_applies_only_when_no_rule_matches() -> None:
    policy = make_policy()
    elsewhere = decide(policy, make_context("JP"))
    assert elsewhere.rule_ids == (NO_MATCH,)
    assert elsewhere.reason == "elsewhere"
    assert elsewhere.permitted == ("CA", "CH", "DE", "FR", "IE", "NL", "SE", "US")
    assert NO_MATCH not in decide(policy, make_context("FR")).rule_ids


def test_without_no_match_a_request_no_rule_matches_is_denied() -> None:
    policy = make_policy(defaults={"data_class": "internal"})
    decision = decide(policy, make_context("JP"))
    assert decision.action is Action.DENY
    assert (decision.deny_code, decision.deny_rule) == (DenyCode.RULE, NO_MATCH)
    assert decision.reason == (
        "no rule matches this request and the policy sets no 'defaults.no_match'"
    )
    assert decision.matched == (RuleMatch(NO_MATCH, "deny", ()),)


def test_no_match_can_deny() -> None:
    policy = make_policy(defaults={"no_match": {"deny": True, "reason": "not served"}})
    decision = decide(policy, make_context("JP"))
    assert (decision.deny_rule, decision.reason) == (NO_MATCH, "not served")


# --- tenants -----------------------------------------------------------------------------


def test_a_tenants_rules_apply_only_to_its_requests() -> None:
    policy = make_policy(tenants={"acme": {"rules": [rule("acme-de", process_in=["DE"])]}})
    assert decide(policy, make_context("FR", tenant="acme")).rule_ids == ("acme-de", "eea-in-eea")
    assert _ids(decide(policy, make_context("FR", tenant="acme"))) == ["de-regional"]
    assert decide(policy, make_context("FR", tenant="other")).rule_ids == ("eea-in-eea",)
    assert decide(policy, make_context("FR")).rule_ids == ("eea-in-eea",)


def test_a_policy_rule_naming_tenants_matches_only_them() -> None:
    policy = make_policy(
        rules=[rule("eea"), rule("acme-deny", tenants=["acme"], deny=True, reason="no")],
        tenants={"acme": {}, "globex": {}},
    )
    assert decide(policy, make_context("FR", tenant="acme")).deny_rule == "acme-deny"
    assert decide(policy, make_context("FR", tenant="globex")).routed
    assert decide(policy, make_context("FR")).routed


def test_a_tenants_rule_cannot_escape_a_fail_closed_policy() -> None:
    policy = make_policy(
        defaults={"data_class": "internal"},
        tenants={"acme": {"rules": [rule("acme-de", process_in=["DE"])]}},
    )
    decision = decide(policy, make_context("JP", tenant="acme"))
    assert decision.action is Action.DENY
    assert decision.deny_rule == NO_MATCH
    assert decision.rule_ids == ("acme-de", NO_MATCH)


def test_a_tenants_rule_cannot_widen_no_match() -> None:
    policy = make_policy(
        endpoints=base_policy()["endpoints"] + [endpoint("jp", "JP", models={"gpt-4o": None})],
        tenants={"acme": {"rules": [rule("acme-jp", process_in=["JP"])]}},
    )
    assert decide(policy, make_context("JP")).routed
    decision = decide(policy, make_context("JP", tenant="acme"))
    assert decision.rule_ids == ("acme-jp", NO_MATCH)
    assert decision.deny_code is DenyCode.NO_PERMITTED_PLACE


# --- endpoints: where they process -------------------------------------------------------


def test_an_endpoint_that_may_process_elsewhere_is_compliant_only_if_that_is_permitted() -> None:
    eea_only = make_policy()
    assert "ie-zone" not in _ids(decide(eea_only, make_context("IE")))
    with_ch = make_policy(rules=[rule("eea-ch", from_=["EEA"], process_in=["EEA", "CH"])])
    assert "ie-zone" in _ids(decide(with_ch, make_context("IE")))


def test_may_process_in_a_subdivision() -> None:
    policy = make_policy(
        endpoints=[
            endpoint("zone", "US", subdivision="US-VA", may_process_in=["US-CA"]),
            endpoint("va", "US", subdivision="US-VA"),
        ],
        models=None,
        rules=[
            rule("us", from_=["US"], process_in=["US"]),
            rule("va-only", from_=["US-VA"], process_in=["US-VA"]),
        ],
    )
    assert _ids(decide(policy, make_context("US"))) == ["va", "zone"]
    assert _ids(decide(policy, make_context(subdivision="US-VA"))) == ["va"]


def test_a_subdivision_is_permitted_by_its_country_or_by_itself() -> None:
    endpoints = base_policy()["endpoints"] + [endpoint("ca-any", "CA", priority=10)]
    policy = make_policy(
        endpoints=endpoints,
        rules=[
            rule("na", from_=["NORTH_AMERICA"], process_in=["NORTH_AMERICA"]),
            rule("qc", from_=["QUEBEC"], process_in=["QUEBEC"]),
        ],
    )
    quebec = decide(policy, make_context(subdivision="CA-QC"))
    assert quebec.permitted == ("CA-QC",)
    assert _ids(quebec) == ["ca-qc"]  # 'ca-any' might be anywhere in Canada
    ontario = decide(policy, make_context(subdivision="CA-ON"))
    assert ontario.permitted == ("CA", "US")
    assert _ids(ontario) == ["ca-any", "ca-qc", "us-east"]


# --- ranks and candidate order -----------------------------------------------------------


def test_the_preferred_tier_comes_first_then_priority_then_locality() -> None:
    policy = make_policy()
    decision = decide(policy, make_context("FR"))
    assert _ids(decision) == ["de-regional", "se-regional", "fr-central"]
    assert decision.candidate_ranks == (0, 0, 1)
    local = decide(policy, make_context("SE"))
    assert _ids(local) == ["se-regional", "de-regional", "fr-central"]
    assert local.candidate_ranks == (0, 1, 2)


def test_a_model_that_prefers_the_edge_goes_to_the_edge_first() -> None:
    decision = decide(make_policy(), make_context("FR", model="small"))
    assert decision.prefer_tier is Tier.EDGE
    assert _ids(decision) == ["nl-edge", "de-regional", "fr-central"]
    assert decision.candidate_ranks == (0, 1, 2)


def test_the_nearest_other_tier_breaks_ties_toward_the_edge() -> None:
    policy = make_policy(
        endpoints=[
            endpoint("central", "DE", tier="central", priority=1),
            endpoint("edge", "SE", tier="edge", priority=90),
        ],
        models=None,
    )
    decision = decide(policy, make_context("DE"))
    assert decision.prefer_tier is Tier.REGIONAL
    assert _ids(decision) == ["edge", "central"]


def test_the_default_preferred_tier_comes_from_defaults() -> None:
    policy = make_policy(defaults={"prefer_tier": "central"})
    decision = decide(policy, make_context("DE"))
    assert decision.prefer_tier is Tier.CENTRAL
    assert _ids(decision)[0] == "fr-central"


def test_priority_comes_before_locality() -> None:
    endpoints = [
        endpoint("de", "DE", priority=20),
        endpoint("se", "SE", priority=10),
        endpoint("fr", "FR", priority=20),
    ]
    decision = decide(make_policy(endpoints=endpoints, models=None), make_context("DE"))
    assert _ids(decision) == ["se", "de", "fr"]
    assert decision.candidate_ranks == (0, 1, 2)


def test_locality_is_subdivision_then_country_then_elsewhere() -> None:
    endpoints = [
        endpoint("us", "US", subdivision="US-VA"),
        endpoint("ca-on", "CA", subdivision="CA-ON"),
        endpoint("ca-qc", "CA", subdivision="CA-QC"),
    ]
    policy = make_policy(endpoints=endpoints, models=None)
    assert _ids(decide(policy, make_context(subdivision="CA-QC"))) == ["ca-qc", "ca-on", "us"]
    assert _ids(decide(policy, make_context("CA"))) == ["ca-on", "ca-qc", "us"]
    assert decide(policy, make_context("CA")).candidate_ranks == (0, 0, 1)


def test_candidate_order_does_not_depend_on_the_catalogue_order() -> None:
    endpoints = base_policy()["endpoints"]
    first = decide(make_policy(endpoints=endpoints), make_context("FR"))
    second = decide(make_policy(endpoints=list(reversed(endpoints))), make_context("FR"))
    assert _ids(first) == _ids(second)
    assert first.candidate_ranks == second.candidate_ranks


# --- deny codes --------------------------------------------------------------------------


def test_no_permitted_place() -> None:
    policy = make_policy(rules=[rule("eea"), rule("us-only", models=["gpt-4o"], process_in=["US"])])
    decision = decide(policy, make_context("FR"))
    assert decision.action is Action.DENY
    assert decision.deny_code is DenyCode.NO_PERMITTED_PLACE
    assert decision.deny_rule == "us-only"
    assert decision.reason == "the matching rules eea, us-only permit no place in common"
    assert decision.permitted == ()


def test_no_compliant_endpoint() -> None:
    policy = make_policy(rules=[rule("ch-only", from_=["CH"], process_in=["CH"])])
    decision = decide(policy, make_context("CH", model="small"))
    assert decision.deny_code is DenyCode.NO_COMPLIANT_ENDPOINT
    assert decision.deny_rule == "ch-only"
    assert decision.permitted == ("CH",)
    assert decision.reason == "no endpoint serving 'small' processes in a permitted place (CH)"
    assert decide(policy, make_context("CH")).routed  # gpt-4o is served in CH


def test_a_long_permitted_list_is_shortened_in_the_reason() -> None:
    policy = make_policy(rules=[rule("far", process_in=["EEA", "NORTH_AMERICA", "JP", "KR"])])
    decision = decide(policy, make_context("FR", model="small"))
    assert decision.routed
    policy = make_policy(
        endpoints=[endpoint("br", "BR")],
        models=None,
        rules=[rule("far", process_in=["EEA", "NORTH_AMERICA", "JP", "KR"])],
    )
    decision = decide(policy, make_context("FR"))
    assert decision.reason == (
        "no endpoint serving 'gpt-4o' processes in a permitted place "
        "(CA, DE, FR, IE, JP, KR, NL, SE, and 1 more)"
    )


def test_unknown_model() -> None:
    decision = decide(make_policy(), make_context("FR", model="gpt-9"))
    assert decision.deny_code is DenyCode.UNKNOWN_MODEL
    assert decision.reason == "no endpoint serves the model 'gpt-9'"
    assert decision.matched == ()
    assert decision.deny_rule is None


def test_a_route_carries_reasons_and_the_policy_version() -> None:
    policy = make_policy(
        rules=[
            rule("a", process_in=["EEA"], reason="first"),
            rule("b", process_in=["EEA"], reason="first"),
            rule("c", process_in=["DE", "FR"]),
        ]
    )
    decision = decide(policy, make_context("FR"))
    assert decision.reason == "first"
    assert decision.policy_version == policy.version
    silent = make_policy(rules=[rule("a", process_in=["EEA"]), rule("b", process_in=["FR"])])
    assert decide(silent, make_context("FR")).reason == "permitted by a, b"


# --- the memo ----------------------------------------------------------------------------


def test_decide_returns_the_same_object_for_the_same_context() -> None:
    policy = make_policy()
    first = decide(policy, make_context("FR", tenant="t", data_class="pii"))
    again = decide(policy, make_context("FR", tenant="t", data_class="pii"))
    assert again is first
    assert first == evaluate(policy, make_context("FR", tenant="t", data_class="pii"))
    # Only the facts a decision depends on are its key: not how the location was found.
    embedded = Location("FR", source=LocationSource.EMBEDDED, database="iptocc")
    assert (
        decide(policy, make_context("FR", tenant="t", data_class="pii", location=embedded)) is first
    )


@pytest.mark.parametrize(
    "change",
    [
        {"location": Location("DE", source=LocationSource.DECLARED)},
        {"location": Location("CA", "CA-QC", LocationSource.DECLARED)},
        {"location": Location(None)},
        {"model": "small"},
        {"tenant": "other"},
        {"data_class": "public"},
    ],
    ids=["country", "subdivision", "unknown", "model", "tenant", "data-class"],
)
def test_decide_returns_a_different_object_for_a_different_context(change: dict) -> None:
    policy = make_policy()
    first = decide(policy, make_context("FR", tenant="t", data_class="pii"))
    other = decide(policy, make_context("FR", **{"tenant": "t", "data_class": "pii", **change}))
    assert other is not first


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "CACHE_LIMIT", 3)
    policy = make_policy()
    for country in ("DE", "FR", "SE", "NL", "IE"):
        decide(policy, make_context(country))
        assert len(policy.cache) <= 3
    assert decide(policy, make_context("IE")) is decide(policy, make_context("IE"))


def test_a_call_naming_no_model_is_decided_under_every_models_rules() -> None:
    policy = make_policy(
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("gpt-in-de", from_=["FR"], models=["gpt-*"], process_in=["DE"]),
            rule("small-not-from-ie", from_=["IE"], models=["small"], deny=True, reason="no"),
        ]
    )
    unnamed = decide(policy, make_context("FR", model=None))
    assert unnamed.rule_ids == ("eea", "gpt-in-de") and unnamed.permitted == ("DE",)
    # Its candidates are the permitted endpoints whatever they serve, in the default tier's order.
    assert [e.id for e in unnamed.candidates] == ["de-regional"]
    assert decide(policy, make_context("FR", model="small")).permitted != ("DE",)
    # From Ireland the small model is refused, so a call naming no model is too.
    assert decide(policy, make_context("IE")).routed
    refused = decide(policy, make_context("IE", model=None))
    assert (refused.deny_code, refused.deny_rule) == (DenyCode.RULE, "small-not-from-ie")
    everywhere = decide(policy, make_context("SE", model=None))
    # Every EEA endpoint but ie-zone, which may also process in Switzerland.
    eea = {"de-regional", "se-regional", "fr-central", "nl-edge"}
    assert {e.id for e in everywhere.candidates} == eea


def test_a_call_naming_no_model_meets_no_match_when_one_models_call_would() -> None:
    policy = make_policy(rules=[rule("gpt-in-se", models=["gpt-4o"], process_in=["SE"])])
    # gpt-4o's call meets gpt-in-se, small's meets no rule and so the no_match default: a call
    # naming no model is under both, and only Sweden is in both.
    unnamed = decide(policy, make_context("US", model=None))
    assert unnamed.rule_ids == ("defaults.no_match", "gpt-in-se")
    assert unnamed.permitted == ("SE",) and [e.id for e in unnamed.candidates] == ["se-regional"]
