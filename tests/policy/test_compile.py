"""Compiling a policy: names resolved to places, endpoints and rules ready for the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from geopin.policy.compile import NO_MATCH_RULE, UNKNOWN_LOCATION_RULE, places_of
from geopin.policy.decision import CredentialRef, ProviderKind, Tier
from geopin.policy.loader import load_policy
from geopin.policy.places import PlaceSet

from .conftest import make_policy, rule, write_text


def test_jurisdictions_expand_their_includes_transitively() -> None:
    policy = make_policy(
        jurisdictions={
            "EU": {"countries": ["DE", "FR"]},
            "EEA": {"include": ["EU"], "countries": ["NO"]},
            "WIDE": {"include": ["EEA", "QUEBEC"], "countries": ["CH"]},
            "QUEBEC": {"subdivisions": ["CA-QC"]},
        },
        rules=[],
        defaults={"no_match": {"process_in": ["WIDE"]}},
    )
    assert policy.jurisdictions["EEA"] == PlaceSet(frozenset({"DE", "FR", "NO"}))
    assert policy.jurisdictions["WIDE"] == PlaceSet(
        frozenset({"DE", "FR", "NO", "CH"}), frozenset({"CA-QC"})
    )


def test_places_of_mixes_jurisdictions_countries_and_subdivisions() -> None:
    jurisdictions = {"EEA": PlaceSet(frozenset({"DE", "FR"}))}
    assert places_of(["EEA", "CH", "CA-QC"], jurisdictions) == PlaceSet(
        frozenset({"DE", "FR", "CH"}), frozenset({"CA-QC"})
    )
    assert places_of([], jurisdictions).empty


def test_endpoints_compile_with_their_upstream_model_names(tmp_path: Path) -> None:
    write_text(
        tmp_path,
        """
        endpoints:
          - id: az
            url: https://az.example/openai/
            kind: azure-openai
            api_version: "2024-10-21"
            country: CA
            subdivision: CA-QC
            may_process_in: [US-VA]
            region: canadaeast
            tier: edge
            priority: 7
            weight: 3
            models: {gpt-4o: gpt-4o-cae, gpt-4o-mini: null}
            credentials: {env: AZ_KEY}
        rules:
          - id: anywhere
            process_in: [CA]
        """,
    )
    policy = load_policy(tmp_path)
    az = policy.endpoints["az"]
    assert az.url == "https://az.example/openai"
    assert az.kind is ProviderKind.AZURE_OPENAI
    assert (az.country, az.subdivision, az.region, az.tier) == (
        "CA",
        "CA-QC",
        "canadaeast",
        Tier.EDGE,
    )
    assert (az.priority, az.weight, az.api_version) == (7, 3, "2024-10-21")
    assert dict(az.models) == {"gpt-4o": "gpt-4o-cae", "gpt-4o-mini": "gpt-4o-mini"}
    assert az.may_process_in == ("US-VA",)
    assert az.credentials == CredentialRef(env="AZ_KEY")
    assert az.credentials.describe() == "env:AZ_KEY"


def test_serving_lists_each_models_endpoints_in_catalogue_order() -> None:
    policy = make_policy()
    assert [e.id for e in policy.serving["small"]] == [
        "de-regional",
        "fr-central",
        "nl-edge",
        "us-east",
    ]
    assert policy.models == frozenset({"gpt-4o", "small"})
    assert policy.prefer_tier == {"small": Tier.EDGE}
    assert policy.default_tier is Tier.REGIONAL


def test_rules_are_sorted_by_id_whatever_their_order_in_the_files() -> None:
    rules = [rule("b-rule"), rule("c-rule"), rule("a-rule")]
    first = make_policy(rules=rules)
    second = make_policy(rules=list(reversed(rules)))
    assert [r.id for r in first.rules] == ["a-rule", "b-rule", "c-rule"]
    assert [r.id for r in second.rules] == ["a-rule", "b-rule", "c-rule"]


def test_a_rule_compiles_its_names_to_places_and_its_globs_to_models() -> None:
    policy = make_policy(
        rules=[
            rule("r", from_=["EEA", "CA-QC", "unknown"], models=["sm*"], process_in=["EEA", "CH"]),
            rule(
                "d",
                tenants=["acme"],
                data_classes=["pii"],
                deny=True,
                reason="no",
                legal_basis="law",
            ),
        ],
        tenants={"acme": {"rules": [rule("acme-de", process_in=["DE"])]}},
    )
    r = policy.rule("r")
    assert r is not None
    assert r.effect == "process_in" and not r.deny
    assert r.places == PlaceSet(frozenset({"DE", "FR", "IE", "NL", "SE", "CH"}))
    assert r.place_names == ("EEA", "CH")
    assert r.from_places == PlaceSet(
        frozenset({"DE", "FR", "IE", "NL", "SE"}), frozenset({"CA-QC"})
    )
    assert r.from_unknown is True
    assert r.models == frozenset({"small"})
    assert (r.tenants, r.data_classes, r.owner) == (None, None, None)
    d = policy.rule("d")
    assert d is not None and d.deny
    assert d.places.empty
    assert (d.reason, d.legal_basis) == ("no", "law")
    assert d.tenants == frozenset({"acme"})
    assert d.data_classes == frozenset({"pii"})
    assert d.from_places is None
    acme = policy.rule("acme-de")
    assert acme is not None and acme.owner == "acme"
    assert policy.tenants == frozenset({"acme"})
    assert policy.data_classes == frozenset({"public", "internal", "pii"})


def test_compiled_rules_remember_where_they_were_written(tmp_path: Path) -> None:
    write_text(
        tmp_path,
        """
        endpoints:
          - {id: de, url: "https://de.example/v1", kind: openai-compatible, country: DE,
             models: {gpt-4o: null}}
        rules:
          - id: de-only
            process_in: [DE]
        defaults:
          unknown_location: {deny: true, reason: unknown}
          no_match: {process_in: [DE]}
        """,
    )
    policy = load_policy(tmp_path)
    assert str(policy.rule("de-only").position) == "policy.yaml:5:9"
    assert policy.unknown_location_rule is not None
    assert policy.unknown_location_rule.id == UNKNOWN_LOCATION_RULE
    assert str(policy.unknown_location_rule.position) == "policy.yaml:8:21"
    assert policy.no_match_rule is not None and policy.no_match_rule.id == NO_MATCH_RULE
    assert [r.id for r in policy.all_rules()] == ["de-only", UNKNOWN_LOCATION_RULE, NO_MATCH_RULE]


def test_without_defaults_there_are_no_default_rules() -> None:
    policy = make_policy(defaults=None)
    assert policy.unknown_location_rule is None and policy.no_match_rule is None
    assert policy.default_data_class is None
    assert policy.rule(NO_MATCH_RULE) is None


def test_the_compiled_policy_is_immutable() -> None:
    policy = make_policy()
    with pytest.raises(AttributeError):
        policy.version = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.endpoints["x"] = policy.endpoints["de-regional"]  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.jurisdictions["X"] = PlaceSet()  # type: ignore[index]


def test_with_warnings_returns_a_copy_with_an_empty_memo() -> None:
    policy = make_policy()
    policy.cache["key"] = "value"
    copy = policy.with_warnings(())
    assert copy.cache == {} and policy.cache == {"key": "value"}
    assert copy.version == policy.version
