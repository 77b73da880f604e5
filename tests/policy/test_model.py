"""The schema of policy files: what a rule, an endpoint and a default may say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from geopin.policy.model import EndpointSpec, PolicyFile, RuleSpec

from .conftest import errors, problems_in, shown

ENDPOINT = """
endpoints:
  - id: de
    url: https://de.example/v1
    kind: openai-compatible
    country: DE
    models: {gpt-4o: null}
"""


def _rule_problems(body: str) -> list[tuple[str, str, str, str | None]]:
    return [shown(p) for p in errors(problems_in(ENDPOINT + "rules:\n  - id: r\n" + body))]


def test_a_rule_that_both_denies_and_constrains() -> None:
    assert _rule_problems("    deny: true\n    reason: no\n    process_in: [DE]\n") == [
        (
            "policy.yaml:8:5",
            "invalid-value",
            "rules[0]: a rule either denies or gives 'process_in', not both",
            None,
        )
    ]


def test_a_rule_that_does_neither() -> None:
    assert _rule_problems("    from: [DE]\n") == [
        (
            "policy.yaml:8:5",
            "invalid-value",
            "rules[0]: a rule needs 'process_in' or 'deny: true'",
            None,
        )
    ]


def test_a_deny_rule_without_a_reason() -> None:
    assert _rule_problems("    deny: true\n") == [
        (
            "policy.yaml:8:5",
            "invalid-value",
            "rules[0]: a deny rule needs a 'reason' (a 451 response carries it)",
            None,
        )
    ]


def test_an_explicit_deny_false_still_needs_process_in() -> None:
    assert [p[2] for p in _rule_problems("    deny: false\n")] == [
        "rules[0]: a rule needs 'process_in' or 'deny: true'"
    ]


def test_a_rule_id_must_be_an_identifier() -> None:
    problems = errors(problems_in(ENDPOINT + "rules:\n  - id: has space\n    process_in: [DE]\n"))
    assert [shown(p) for p in problems] == [
        (
            "policy.yaml:8:9",
            "invalid-value",
            "rules[0].id: 'has space' is not a valid value here",
            None,
        )
    ]


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ("{deny: true, reason: no, process_in: [DE]}", "give either 'process_in' or 'deny: true'"),
        ("{reason: nothing to do}", "give either 'process_in' or 'deny: true'"),
        ("{deny: true}", "a deny needs a 'reason' (a 451 response carries it)"),
    ],
)
def test_a_default_outcome_denies_or_constrains(outcome: str, message: str) -> None:
    problems = errors(problems_in(ENDPOINT + f"defaults:\n  no_match: {outcome}\n"))
    assert [shown(p) for p in problems] == [
        ("policy.yaml:8:13", "invalid-value", f"defaults.no_match: {message}", None)
    ]


@pytest.mark.parametrize(
    "credentials", ["{env: KEY, file: /run/secrets/key}", "{}"], ids=["both", "neither"]
)
def test_credentials_name_exactly_one_place(credentials: str) -> None:
    problems = errors(problems_in(ENDPOINT + f"    credentials: {credentials}\n"))
    assert [shown(p) for p in problems] == [
        (
            "policy.yaml:7:18",
            "invalid-value",
            "endpoints[0].credentials: give exactly one of 'env' or 'file'",
            None,
        )
    ]


def test_credentials_env_must_be_a_variable_name() -> None:
    problems = errors(problems_in(ENDPOINT + "    credentials: {env: my-key}\n"))
    assert [p.message for p in problems] == [
        "endpoints[0].credentials.env: 'my-key' is not a valid value here"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("    priority: -1", "endpoints[0].priority: Input should be greater than or equal to 0"),
        (
            "    priority: 10001",
            "endpoints[0].priority: Input should be less than or equal to 10000",
        ),
        ("    weight: 0", "endpoints[0].weight: Input should be greater than or equal to 1"),
    ],
)
def test_endpoint_numbers_have_bounds(line: str, message: str) -> None:
    problems = errors(problems_in(ENDPOINT + line + "\n"))
    assert [(p.line, p.message) for p in problems] == [(7, message)]


def test_an_endpoint_serves_at_least_one_model() -> None:
    problems = errors(problems_in(ENDPOINT.replace("{gpt-4o: null}", "{}")))
    assert [(str(p.position), p.message) for p in problems] == [
        (
            "policy.yaml:6:13",
            "endpoints[0].models: Dictionary should have at least 1 item after validation, not 0",
        )
    ]


def test_rule_from_is_written_from() -> None:
    spec = RuleSpec.model_validate({"id": "r", "from": ["DE"], "process_in": ["DE"]})
    assert spec.from_ == ["DE"]
    assert spec.deny is False


def test_specs_are_frozen_and_forbid_extra_keys() -> None:
    spec = EndpointSpec.model_validate(
        {
            "id": "de",
            "url": "https://de.example/v1",
            "kind": "openai-compatible",
            "country": "DE",
            "models": {"gpt-4o": None},
        }
    )
    with pytest.raises(ValidationError):
        spec.country = "FR"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        PolicyFile.model_validate({"rulez": []})


def test_every_section_is_optional() -> None:
    empty = PolicyFile.model_validate({})
    assert (empty.endpoints, empty.rules, empty.jurisdictions, empty.defaults) == ([], [], {}, None)
