"""Warnings about clients a valid policy leaves with no compliant endpoint."""

from __future__ import annotations

from pathlib import Path

from geopin.policy.loader import load_with_problems
from geopin.policy.problems import Severity

from .conftest import base_policy, endpoint, make_policy, rule, shown, write_text

US_ONLY = base_policy()["endpoints"] + [endpoint("us-only", "US", models={"us-model": None})]


def test_a_sound_policy_has_no_warnings() -> None:
    assert make_policy().warnings == ()


def test_a_rule_that_leaves_a_model_nowhere_to_go_is_named_with_its_clients_and_models(
    tmp_path: Path,
) -> None:
    write_text(
        tmp_path,
        """
        jurisdictions:
          EEA: {countries: [DE, FR]}
        endpoints:
          - {id: de, url: "https://de.example/v1", kind: openai-compatible, country: DE,
             models: {gpt-4o: null}}
          - {id: us, url: "https://us.example/v1", kind: openai-compatible, country: US,
             models: {gpt-4o: null, claude: null, llama: null}}
        rules:
          - id: eea-in-eea
            from: [EEA]
            process_in: [EEA]
        defaults:
          no_match: {process_in: [US]}
        """,
    )
    policy, problems = load_with_problems(tmp_path)
    assert policy is not None
    assert [(shown(p), p.severity) for p in problems] == [
        (
            (
                "policy.yaml:9:9",
                "no-compliant-endpoint",
                "clients in EEA asking for claude, llama have no compliant endpoint",
                "rule 'eea-in-eea' leaves no endpoint serving them",
            ),
            Severity.WARNING,
        )
    ]
    assert policy.warnings == tuple(problems)


def test_locations_outside_a_whole_jurisdiction_are_listed_by_code() -> None:
    policy = make_policy(
        endpoints=US_ONLY,
        rules=[
            rule("eea", from_=["EEA"], process_in=["EEA"]),
            rule("fr-de", from_=["FR"], process_in=["FR"]),
        ],
    )
    assert [(w.message, w.hint) for w in policy.warnings] == [
        (
            "clients in DE, IE, NL, SE asking for us-model have no compliant endpoint",
            "rule 'eea' leaves no endpoint serving them",
        ),
        (
            "clients in FR asking for us-model have no compliant endpoint",
            "rule 'fr-de' leaves no endpoint serving them",
        ),
    ]


def test_a_deny_rule_is_an_intended_refusal_and_is_not_reported() -> None:
    policy = make_policy(
        endpoints=US_ONLY,
        rules=[
            rule("eea-in-eea", from_=["EEA"], process_in=["EEA"]),
            rule("no-us-model", from_=["EEA"], models=["us-model"], deny=True),
        ],
    )
    assert policy.warnings == ()


def test_defaults_are_reported_by_their_own_names() -> None:
    policy = make_policy(
        defaults={
            "unknown_location": {"process_in": ["JP"]},
            "no_match": {"process_in": ["CH"]},
        }
    )
    assert [(w.message, w.hint) for w in policy.warnings] == [
        (
            "clients in unknown locations asking for gpt-4o, small have no compliant endpoint",
            "rule 'defaults.unknown_location' leaves no endpoint serving them",
        ),
        (
            # CH is named nowhere in the policy's places: it is one of the "other countries".
            "clients in NORTH_AMERICA, CA-QC, other countries asking for small have no "
            "compliant endpoint",
            "rule 'defaults.no_match' leaves no endpoint serving them",
        ),
    ]
    positions = {w.hint: w.position for w in policy.warnings}
    assert policy.no_match_rule is not None and policy.unknown_location_rule is not None
    assert positions["rule 'defaults.no_match' leaves no endpoint serving them"] == (
        policy.no_match_rule.position
    )


def test_a_tenant_is_warned_about_only_what_its_own_rules_add() -> None:
    policy = make_policy(
        endpoints=US_ONLY,
        tenants={"acme": {"rules": [rule("acme-us", process_in=["US"])]}},
    )
    assert [(w.message, w.hint) for w in policy.warnings] == [
        (
            "tenant 'acme': clients in EEA asking for gpt-4o, small have no compliant endpoint",
            "rule 'eea-in-eea' leaves no endpoint serving them",
        ),
        (
            "clients in EEA asking for us-model have no compliant endpoint",
            "rule 'eea-in-eea' leaves no endpoint serving them",
        ),
    ]
    eea = policy.rule("eea-in-eea")
    assert eea is not None
    assert {w.position for w in policy.warnings} == {eea.position}
