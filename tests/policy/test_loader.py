"""Reading policy files: YAML with positions, schema problems per entry, merging, compiling."""

from __future__ import annotations

from pathlib import Path

import pytest

from geopin.errors import PolicyError
from geopin.policy.loader import MAX_FILE_BYTES, load_policy, load_with_problems, read_source
from geopin.policy.problems import Severity

from .conftest import (
    base_policy,
    endpoint,
    errors,
    problems_in,
    rule,
    shown,
    with_code,
    write_policy,
    write_text,
)

VALID_TAIL = """
endpoints:
  - id: de
    url: https://de.example/v1
    kind: openai-compatible
    country: DE
    models: {gpt-4o: null}
rules:
  - id: anywhere-in-de
    process_in: [DE]
"""


# --- YAML itself -------------------------------------------------------------------------


def test_yaml_syntax_error_is_reported_where_the_parser_stopped() -> None:
    [problem] = problems_in(
        """
        rules:
          - id: a
            process_in: [DE
        """
    )
    assert shown(problem) == (
        "policy.yaml:4:1",
        "yaml-syntax",
        "expected ',' or ']', but got '<stream end>'",
        None,
    )


def test_bad_indentation_is_a_yaml_syntax_error_with_its_line() -> None:
    [problem] = problems_in(
        """
        rules:
          - id: a
           process_in: [DE]
        """
    )
    assert problem.code == "yaml-syntax"
    assert (problem.line, problem.column) == (3, 4)


def test_duplicate_yaml_key_is_reported_at_the_second_key() -> None:
    [problem] = problems_in(
        """
        rules:
          - id: a
            id: b
            process_in: [DE]
        """
    )
    assert shown(problem) == (
        "policy.yaml:3:5",
        "yaml-syntax",
        'found duplicate key "id" with value "b" (original value: "a")',
        None,
    )


def test_file_that_is_not_utf8_is_reported_for_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_bytes(b"metadata:\n  name: caf\xe9\n")
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        ("policy.yaml", "not-utf8", "not UTF-8 text: invalid continuation byte", None)
    ]
    assert problems[0].line == 0


def test_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        ("policy.yaml", "too-large", "policy file over 4 MiB", None)
    ]


def test_a_file_that_is_not_a_mapping_is_an_error() -> None:
    [problem] = problems_in("- just\n- a list\n")
    assert shown(problem) == (
        "policy.yaml:1:1",
        "invalid-value",
        "a policy file must be a mapping",
        None,
    )


def test_an_empty_file_is_an_empty_policy_section_list(tmp_path: Path) -> None:
    write_text(tmp_path, VALID_TAIL, "a.yaml")
    write_text(tmp_path, "# nothing here yet\n", "b.yaml")
    policy = load_policy(tmp_path)
    assert policy.files == ("a.yaml", "b.yaml")


def test_missing_directory(tmp_path: Path) -> None:
    _, problems = load_with_problems(tmp_path / "nowhere")
    assert [shown(p) for p in problems] == [
        (str(tmp_path / "nowhere"), "not-found", "no such file or directory", None)
    ]


def test_directory_without_policy_files(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not a policy")
    (tmp_path / "sub.yaml").mkdir()  # a directory, not a file
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        (str(tmp_path), "empty-policy", "no *.yaml policy files found here", None)
    ]


def test_yml_files_are_read_too_and_a_single_file_can_be_loaded(tmp_path: Path) -> None:
    write_text(tmp_path, VALID_TAIL, "policy.yml")
    assert load_policy(tmp_path).files == ("policy.yml",)
    assert load_policy(tmp_path / "policy.yml").files == ("policy.yml",)


# --- unknown keys, with did-you-mean -----------------------------------------------------


def test_unknown_top_level_key() -> None:
    [problem] = problems_in("rulez: []\n" + VALID_TAIL)
    assert shown(problem) == (
        "policy.yaml:1:1",
        "unknown-key",
        "unknown key 'rulez'",
        "did you mean 'rules'?",
    )


def test_unknown_top_level_key_with_nothing_close_lists_the_allowed_keys() -> None:
    [problem] = problems_in("zzz: 1\n" + VALID_TAIL)
    assert problem.code == "unknown-key"
    assert problem.hint == (
        "allowed: data_classes, defaults, endpoints, jurisdictions, metadata, models, rules, "
        "tenants"
    )


def test_unknown_key_in_an_endpoint() -> None:
    [problem] = problems_in(
        """
        endpoints:
          - id: de
            url: https://de.example/v1
            kind: openai-compatible
            country: DE
            models: {gpt-4o: null}
            prority: 5
        """
    )
    assert shown(problem) == (
        "policy.yaml:7:5",
        "unknown-key",
        "unknown key 'prority' in endpoints[0]",
        "did you mean 'priority'?",
    )


def test_unknown_key_in_a_rule() -> None:
    problems = problems_in(
        VALID_TAIL
        + """
  - id: second
    process_in: [DE]
    modles: [gpt-4o]
"""
    )
    assert [shown(p) for p in errors(problems)] == [
        (
            "policy.yaml:13:5",
            "unknown-key",
            "unknown key 'modles' in rules[1]",
            "did you mean 'models'?",
        )
    ]


def test_unknown_key_in_a_tenants_rule() -> None:
    problems = problems_in(
        VALID_TAIL
        + """
tenants:
  acme:
    rules:
      - id: acme-de
        process_in: [DE]
        reasn: contract
"""
    )
    assert [shown(p) for p in errors(problems)] == [
        (
            "policy.yaml:16:9",
            "unknown-key",
            "unknown key 'reasn' in tenants.acme.rules[0]",
            "did you mean 'reason'?",
        )
    ]


def test_unknown_key_in_defaults() -> None:
    problems = problems_in(VALID_TAIL + "defaults:\n  data_clas: internal\n")
    assert [shown(p) for p in errors(problems)] == [
        (
            "policy.yaml:11:3",
            "unknown-key",
            "unknown key 'data_clas' in defaults",
            "did you mean 'data_class'?",
        )
    ]


def test_unknown_key_in_a_default_outcome() -> None:
    problems = problems_in(
        VALID_TAIL + "defaults:\n  no_match: {deny: true, reason: no, resaon: x}\n"
    )
    assert [shown(p) for p in errors(problems)] == [
        (
            "policy.yaml:11:38",
            "unknown-key",
            "unknown key 'resaon' in defaults.no_match",
            "did you mean 'reason'?",
        )
    ]


def test_unknown_key_in_metadata_and_a_jurisdiction() -> None:
    problems = problems_in(
        VALID_TAIL
        + """
metadata:
  nme: example
jurisdictions:
  EEA:
    countries: [DE]
    includes: [X]
"""
    )
    assert [shown(p) for p in errors(problems)] == [
        (
            "policy.yaml:12:3",
            "unknown-key",
            "unknown key 'nme' in metadata",
            "did you mean 'name'?",
        ),
        (
            "policy.yaml:16:5",
            "unknown-key",
            "unknown key 'includes' in jurisdictions.EEA",
            "did you mean 'include'?",
        ),
    ]


# --- wrong types and missing keys --------------------------------------------------------


def test_sections_of_the_wrong_type() -> None:
    problems = problems_in(
        """
        endpoints: {}
        rules: 5
        jurisdictions: []
        data_classes: [a b]
        """
    )
    assert [shown(p) for p in problems] == [
        ("policy.yaml:1:12", "invalid-value", "'endpoints' must be a list", None),
        ("policy.yaml:2:8", "invalid-value", "'rules' must be a list", None),
        ("policy.yaml:3:16", "invalid-value", "'jurisdictions' must be a mapping", None),
        (
            "policy.yaml:4:16",
            "invalid-value",
            "data_classes[0]: 'a b' is not a valid value here",
            None,
        ),
    ]


def test_wrong_value_types_in_an_endpoint() -> None:
    problems = problems_in(
        """
        endpoints:
          - id: de
            url: de.example
            kind: openai
            country: DE
            priority: high
            tier: nearby
            models: {gpt-4o: null}
        """
    )
    assert [(str(p.position), p.code, p.message) for p in problems] == [
        (
            "policy.yaml:3:10",
            "invalid-value",
            "endpoints[0].url: 'de.example' is not a valid value here",
        ),
        (
            "policy.yaml:4:11",
            "invalid-value",
            "endpoints[0].kind: Input should be 'openai-compatible', 'azure-openai' or 'anthropic'",
        ),
        (
            "policy.yaml:6:15",
            "invalid-value",
            "endpoints[0].priority: Input should be a valid integer, unable to parse string as "
            "an integer",
        ),
        (
            "policy.yaml:7:11",
            "invalid-value",
            "endpoints[0].tier: Input should be 'edge', 'regional' or 'central'",
        ),
    ]


def test_a_list_where_a_rule_wants_a_list_of_strings() -> None:
    problems = problems_in(VALID_TAIL + "  - id: x\n    process_in: DE\n")
    assert [(str(p.position), p.message) for p in errors(problems)] == [
        ("policy.yaml:11:17", "rules[1].process_in: Input should be a valid list"),
    ]


def test_missing_required_keys_are_reported_at_the_entry() -> None:
    problems = problems_in(
        """
        endpoints:
          - id: de
            kind: openai-compatible
        rules:
          - process_in: [DE]
        """
    )
    assert [shown(p) for p in problems] == [
        ("policy.yaml:2:5", "invalid-value", "endpoints[0]: missing required key 'url'", None),
        ("policy.yaml:2:5", "invalid-value", "endpoints[0]: missing required key 'country'", None),
        ("policy.yaml:2:5", "invalid-value", "endpoints[0]: missing required key 'models'", None),
        ("policy.yaml:5:5", "invalid-value", "rules[0]: missing required key 'id'", None),
    ]


# --- every problem at once ---------------------------------------------------------------


def test_a_file_with_several_independent_errors_reports_all_of_them() -> None:
    problems = problems_in(
        """
        jurisdictions:
          EEA: {countries: [DE, XX]}
        endpoints:
          - id: broken
            url: https://broken.example/v1
            kind: openai-compatible
            country: DE
            modles: {gpt-4o: null}
          - id: de
            url: https://de.example/v1
            kind: openai-compatible
            country: DE
            models: {gpt-4o: null}
        rules:
          - id: both
            deny: true
            process_in: [DE]
          - id: typo
            from: [EEAA]
            process_in: [EEA]
        sections: 1
        """
    )
    assert [(str(p.position), p.code) for p in problems] == [
        ("policy.yaml:2:25", "invalid-code"),
        ("policy.yaml:4:5", "invalid-value"),  # endpoints[0]: missing 'models'
        ("policy.yaml:8:5", "unknown-key"),  # modles
        ("policy.yaml:15:5", "invalid-value"),  # both deny and process_in
        ("policy.yaml:19:12", "unknown-jurisdiction"),  # EEAA, in the rule after the broken one
        ("policy.yaml:21:1", "unknown-key"),  # sections
    ]
    assert with_code(problems, "unknown-jurisdiction")[0].hint == "did you mean 'EEA'?"


def test_a_broken_entry_is_not_reported_again_as_an_unknown_name() -> None:
    problems = problems_in(
        """
        endpoints:
          - id: de
            url: https://de.example/v1
            kind: openai-compatible
            country: DE
            models: {special: null}
            prioirty: 1
        rules:
          - id: special-in-de
            models: [special]
            process_in: [DE]
        """
    )
    assert [p.code for p in problems] == ["unknown-key"]


def test_problems_across_files_are_sorted_by_file_and_position(tmp_path: Path) -> None:
    write_text(tmp_path, "rules:\n  - id: b\n    process_in: [XX]\n", "b.yaml")
    write_text(tmp_path, "zzz: 1\nrules:\n  - id: a\n    process_in: [YY]\n", "a.yaml")
    _, problems = load_with_problems(tmp_path)
    assert [str(p.position) for p in problems] == ["a.yaml:1:1", "a.yaml:4:18", "b.yaml:3:18"]


# --- merging -----------------------------------------------------------------------------


def test_sections_are_merged_across_files(tmp_path: Path) -> None:
    data = base_policy()
    write_policy(tmp_path, "1-places.yaml", jurisdictions=data["jurisdictions"])
    write_policy(tmp_path, "2-endpoints.yaml", endpoints=data["endpoints"][:4])
    write_policy(
        tmp_path,
        "3-more.yaml",
        endpoints=data["endpoints"][4:],
        models=data["models"],
        data_classes=data["data_classes"],
        rules=data["rules"],
        defaults=data["defaults"],
    )
    policy = load_policy(tmp_path)
    assert policy.files == ("1-places.yaml", "2-endpoints.yaml", "3-more.yaml")
    assert list(policy.endpoints) == [e["id"] for e in data["endpoints"]]
    assert set(policy.jurisdictions) == {"EEA", "NORTH_AMERICA", "QUEBEC"}
    assert policy.default_data_class == "internal"


def test_duplicate_jurisdictions_across_files(tmp_path: Path) -> None:
    write_text(tmp_path, "jurisdictions:\n  EEA: {countries: [DE]}\n" + VALID_TAIL, "a.yaml")
    write_text(tmp_path, "# more\njurisdictions:\n  EEA: {countries: [FR]}\n", "b.yaml")
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        (
            "b.yaml:3:3",
            "duplicate-id",
            "jurisdiction 'EEA' is defined twice (first at a.yaml:2:3)",
            None,
        )
    ]


def test_duplicate_tenants_models_data_classes_and_defaults_across_files(tmp_path: Path) -> None:
    write_text(
        tmp_path,
        VALID_TAIL
        + "models:\n  gpt-4o: {}\ndata_classes: [pii]\ntenants:\n  acme: {}\n"
        + "defaults: {data_class: pii}\n",
        "a.yaml",
    )
    write_text(
        tmp_path,
        "models:\n  gpt-4o: {}\ndata_classes: [pii]\ntenants:\n  acme: {}\n"
        + "defaults: {prefer_tier: edge}\n",
        "b.yaml",
    )
    _, problems = load_with_problems(tmp_path)
    assert [shown(p) for p in problems] == [
        (
            "b.yaml:2:3",
            "duplicate-id",
            "model 'gpt-4o' is defined twice (first at a.yaml:11:3)",
            None,
        ),
        (
            "b.yaml:3:16",
            "duplicate-id",
            "data class 'pii' is defined twice (first at a.yaml:12:16)",
            None,
        ),
        (
            "b.yaml:5:3",
            "duplicate-id",
            "tenant 'acme' is defined twice (first at a.yaml:14:3)",
            None,
        ),
        (
            "b.yaml:6:1",
            "duplicate-id",
            "section 'defaults' is defined twice (first at a.yaml:15:1)",
            None,
        ),
    ]


# --- the result --------------------------------------------------------------------------


def test_a_policy_with_errors_is_never_compiled(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        endpoints=[endpoint("de", "XX")],
        rules=[rule("a", process_in=["EL"]), rule("b", deny=True, reason=None)],
    )
    policy, problems = load_with_problems(tmp_path)
    assert policy is None
    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path)
    assert raised.value.problems == errors(problems)
    assert len(raised.value.problems) == 3
    assert str(raised.value) == f"{raised.value.problems[0]} (and 2 more)"


def test_warnings_do_not_stop_a_policy_and_travel_with_it(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        jurisdictions={"NOWHERE": {}},
        endpoints=[endpoint("de", "DE")],
        rules=[rule("de-only", process_in=["DE"])],
    )
    policy, problems = load_with_problems(tmp_path)
    assert policy is not None
    assert [p.code for p in problems] == ["empty-jurisdiction"]
    assert problems[0].severity is Severity.WARNING
    assert policy.warnings == tuple(problems)


def test_version_is_a_hash_of_the_contents(tmp_path: Path) -> None:
    write_text(tmp_path / "one", VALID_TAIL)
    write_text(tmp_path / "two", VALID_TAIL)
    write_text(tmp_path / "three", VALID_TAIL.replace("[DE]", "[DE, FR]"))
    first, second, third = (load_policy(tmp_path / n) for n in ("one", "two", "three"))
    assert first.version == second.version
    assert first.version != third.version
    assert len(first.version) == 16


def test_read_source_keeps_where_each_entry_was_written(tmp_path: Path) -> None:
    write_text(tmp_path, VALID_TAIL)
    source, problems = read_source(tmp_path)
    assert problems == []
    assert str(source.endpoints[0].at("country")) == "policy.yaml:5:14"
    assert str(source.rules[0].at("id")) == "policy.yaml:8:9"
    assert str(source.rules[0].at("id", key=True)) == "policy.yaml:8:5"
