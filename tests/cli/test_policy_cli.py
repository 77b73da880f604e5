"""`geopin policy validate|explain|test|schema`, run as a user runs them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner, Result
from ruamel.yaml import YAML

from geopin.cli import main
from geopin.policy.loader import load_with_problems

SHIPPED = Path(__file__).resolve().parents[2] / "policies"

BROKEN = """\
endpoints:
  - id: de
    url: https://de.example/v1
    kind: openai-compatible
    country: DE
    models: {gpt-4o: null}
    prority: 5
rules:
  - id: r
    process_in: [EL]
"""

WARNED = """\
jurisdictions:
  EMPTY: {name: nothing yet}
endpoints:
  - id: de
    url: https://de.example/v1
    kind: openai-compatible
    country: DE
    models: {gpt-4o: null}
rules:
  - id: r
    process_in: [DE]
"""


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _geopin(*args: str) -> Result:
    return CliRunner().invoke(main, ["policy", *args], catch_exceptions=False)


def _write(directory: str, text: str, name: str = "policy.yaml") -> str:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / name).write_text(text)
    return directory


def _shipped_copy() -> str:
    shutil.copytree(SHIPPED, "policies")
    return "policies"


def _case_count(directory: Path) -> int:
    yaml = YAML(typ="safe", pure=True)
    return sum(len(yaml.load(f)["cases"]) for f in sorted((directory / "tests").glob("*.yaml")))


# --- validate ----------------------------------------------------------------------------


def test_validate_a_valid_policy_prints_its_summary() -> None:
    policy, problems = load_with_problems(SHIPPED)
    assert policy is not None
    result = _geopin("validate", str(SHIPPED))
    assert result.exit_code == 0
    assert result.stdout == (
        f"{SHIPPED}: valid (version {policy.version}, 3 files, {len(policy.endpoints)} "
        f"endpoints, {len(policy.all_rules())} rules, {len(problems)} warning(s))\n"
    )
    assert result.stderr.splitlines() == [str(p) for p in problems]


def test_validate_defaults_to_the_policies_directory() -> None:
    _shipped_copy()
    result = _geopin("validate")
    assert result.exit_code == 0
    assert result.stdout.startswith("policies: valid (version ")


def test_validate_a_broken_policy_prints_every_problem_with_its_position() -> None:
    result = _geopin("validate", _write("broken", BROKEN))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "broken/policy.yaml:7:5: error[unknown-key]: unknown key 'prority' in endpoints[0] "
        "(did you mean 'priority'?)",
        "broken/policy.yaml:10:18: error[invalid-code]: 'EL' is not an ISO 3166 place code "
        "(ISO 3166-1 spells it 'GR')",
    ]
    assert result.stdout == "broken: invalid: 2 error(s), 0 warning(s)\n"


def test_validate_json_for_a_broken_policy() -> None:
    result = _geopin("validate", _write("broken", BROKEN), "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report == {
        "valid": False,
        "version": None,
        "files": [],
        "problems": [
            {
                "file": "broken/policy.yaml",
                "line": 7,
                "column": 5,
                "severity": "error",
                "code": "unknown-key",
                "message": "unknown key 'prority' in endpoints[0]",
                "hint": "did you mean 'priority'?",
            },
            {
                "file": "broken/policy.yaml",
                "line": 10,
                "column": 18,
                "severity": "error",
                "code": "invalid-code",
                "message": "'EL' is not an ISO 3166 place code",
                "hint": "ISO 3166-1 spells it 'GR'",
            },
        ],
    }


def test_validate_json_for_a_valid_policy() -> None:
    policy, _ = load_with_problems(SHIPPED)
    assert policy is not None
    report = json.loads(_geopin("validate", str(SHIPPED), "--format", "json").stdout)
    assert report["valid"] is True
    assert report["version"] == policy.version
    assert report["files"] == list(policy.files)
    assert {p["severity"] for p in report["problems"]} == {"warning"}


def test_strict_turns_warnings_into_failure() -> None:
    directory = _write("warned", WARNED)
    relaxed = _geopin("validate", directory)
    assert relaxed.exit_code == 0
    assert relaxed.stderr == (
        "warned/policy.yaml:2:3: warning[empty-jurisdiction]: jurisdiction 'EMPTY' has no places\n"
    )
    assert _geopin("validate", directory, "--strict").exit_code == 1
    strict_json = _geopin("validate", directory, "--strict", "--format", "json")
    assert strict_json.exit_code == 1
    assert json.loads(strict_json.stdout)["valid"] is True  # valid, but not clean


def test_validate_a_missing_directory() -> None:
    result = _geopin("validate", "nowhere")
    assert result.exit_code == 1
    assert result.stderr == "nowhere: error[not-found]: no such file or directory\n"


# --- explain -----------------------------------------------------------------------------


def _explain(*args: str) -> Result:
    return _geopin("explain", "--policy", str(SHIPPED), *args)


def test_explain_in_text() -> None:
    result = _explain("--country", "DE", "--model", "gpt-4o")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Policy     {SHIPPED} (version ")
    assert lines[1:5] == [
        "Client     DE Germany (source: declared)",
        "Request    model gpt-4o, tenant -, data class internal (policy default)",
        "Decision   ROUTE to azure-germanywestcentral (DE)",
        "Reason     Personal data of clients in the EEA is processed in the EEA.",
    ]
    assert re.search(
        r"^  \+ eea-in-eea +process_in +matches +\[.*rules\.yaml:\d+:\d+\]$", result.stdout, re.M
    )
    assert (
        "  1. azure-germanywestcentral  rank 0  DE  regional  priority 10  model gpt-4o-gwc"
        in lines
    )
    assert "  openai-eu: may also process in CH, which is not permitted" in lines


def test_explain_json_with_a_subdivision_and_a_data_class() -> None:
    result = _explain(
        "--subdivision", "CA-QC", "--model", "gpt-4o", "--data-class", "pii", "--json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["location"]["country"] == "CA"
    assert data["location"]["subdivision_name"] == "Quebec"
    assert data["request"]["effective_data_class"] == "pii"
    assert data["permitted"] == ["CA-QC"]
    assert [c["endpoint"] for c in data["candidates"]] == ["azure-canadaeast"]
    assert {r["rule"] for r in data["rules"] if r["matched"]} == {
        "quebec-pii-in-quebec",
        "defaults.no_match",
    }


def test_explain_for_a_tenant_and_lower_case_codes() -> None:
    result = _explain(
        "--country", "fr", "--model", "gpt-4o-mini", "--tenant", "acme-health-de", "--json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["location"]["country"] == "FR"
    assert data["request"]["tenant"] == "acme-health-de"
    assert [c["endpoint"] for c in data["candidates"]] == ["azure-germanywestcentral"]


def test_explain_an_unknown_location() -> None:
    result = _explain("--unknown", "--model", "gpt-4o")
    assert result.exit_code == 0
    assert "Client     unknown (source: none)" in result.stdout
    assert "Decision   DENY (rule_deny) by defaults.unknown_location" in result.stdout


def test_explain_an_ip_in_a_documentation_range_with_the_embedded_data() -> None:
    result = _explain("--ip", "192.0.2.10", "--model", "gpt-4o", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["location"]["country"] is None
    assert data["location"]["source"] == "embedded"
    assert data["location"]["database"].startswith("iptocc ")
    assert (data["action"], data["deny_rule"]) == ("deny", "defaults.unknown_location")


def test_explain_with_a_missing_geoip_database_is_an_error() -> None:
    result = _explain("--ip", "192.0.2.10", "--model", "gpt-4o", "--geoip-db", "missing.mmdb")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--country", "XX"], "'XX' is not an ISO 3166-1 alpha-2 code"),
        (["--country", "UK"], "'UK' is not an ISO 3166-1 alpha-2 code"),
        (["--subdivision", "CA-ZZ"], "'CA-ZZ' is not an ISO 3166-2 code"),
        (["--country", "US", "--subdivision", "CA-QC"], "CA-QC is not in US"),
        (["--country", "DE", "--unknown"], "give only one of --ip, --country or --unknown"),
        (["--country", "DE", "--ip", "192.0.2.1"], "give only one of --ip, --country or --unknown"),
        ([], "give --ip, --country (optionally with --subdivision) or --unknown"),
        (["--ip", "not-an-ip"], "'not-an-ip' is not an IP address"),
    ],
)
def test_explain_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = _explain("--model", "gpt-4o", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_explain_refuses_an_invalid_policy() -> None:
    result = _geopin(
        "explain", "--policy", _write("broken", BROKEN), "--country", "DE", "--model", "x"
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "broken: invalid policy; run `geopin policy validate broken`"
    )


# --- test --------------------------------------------------------------------------------


def test_test_runs_the_shipped_cases() -> None:
    result = _geopin("test", str(SHIPPED))
    assert result.exit_code == 0
    assert result.stdout == f"{_case_count(SHIPPED)} passed, 0 failed\n"


def test_test_verbose_lists_passing_cases() -> None:
    result = _geopin("test", str(SHIPPED), "-v")
    assert result.exit_code == 0
    passes = [line for line in result.stdout.splitlines() if line.startswith("PASS ")]
    assert len(passes) == _case_count(SHIPPED)
    assert re.fullmatch(r"PASS .*regions\.yaml:3:5: EEA clients stay in the EEA, .*", passes[0])


def test_a_failing_case_exits_1_with_the_failure_and_the_rule_trace() -> None:
    directory = _shipped_copy()
    _write(
        f"{directory}/tests",
        """\
cases:
  - note: someone expects German clients to be refused
    request: {country: DE, model: gpt-4o}
    expect: {action: deny, deny_rule: eea-in-eea}
  - note: documentation addresses are unknown locations
    request: {ip: 192.0.2.55, model: gpt-4o}
    expect: {action: deny, deny_rule: defaults.unknown_location}
""",
        "zz-wrong.yaml",
    )
    result = _geopin("test", directory)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    failing = lines.index(
        "FAIL policies/tests/zz-wrong.yaml:2:5: someone expects German clients to be refused"
    )
    assert lines[failing + 1 : failing + 3] == [
        "     action: expected deny, got route",
        "     deny_rule: expected eea-in-eea, got None",
    ]
    trace = "\n".join(lines[failing + 3 :])
    assert "     Decision   ROUTE to azure-germanywestcentral (DE)" in trace
    assert re.search(r"^       \+ eea-in-eea +process_in +matches", trace, re.M)
    assert lines[-1] == f"{_case_count(SHIPPED) + 1} passed, 1 failed"


def test_test_without_case_files() -> None:
    result = _geopin("test", _write("nocases", WARNED))
    assert result.exit_code == 1
    assert result.stderr == "nocases/tests: no case files (*.yaml) found\n"


def test_test_reports_a_broken_case_file() -> None:
    directory = _write("pol", WARNED)
    _write(f"{directory}/tests", "cases:\n  - note: x\n    request: {country: DE}\n", "c.yaml")
    result = _geopin("test", directory)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "pol/tests/c.yaml:2:5: error[invalid-value]: cases[0]: missing required key 'expect'",
        "pol/tests/c.yaml:3:14: error[invalid-value]: cases[0].request: missing required key "
        "'model'",
    ]
    assert result.stdout == "0 passed, 0 failed\n"


# --- schema ------------------------------------------------------------------------------


def test_schema_is_a_json_schema_that_accepts_the_shipped_policy_files() -> None:
    result = _geopin("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "geopin policy file"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    yaml = YAML(typ="safe", pure=True)
    files = sorted(SHIPPED.glob("*.yaml"))
    assert files
    for file in files:
        errors = [e.message for e in validator.iter_errors(yaml.load(file))]
        assert errors == [], f"{file.name}: {errors}"


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = json.loads(_geopin("schema").stdout)
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not validator.is_valid({"rulez": []})
    assert not validator.is_valid({"endpoints": [{"id": "x"}]})
    assert not validator.is_valid({"rules": [{"id": "r", "process_in": "DE"}]})
    assert validator.is_valid({"rules": [{"id": "r", "from": ["DE"], "process_in": ["DE"]}]})


def test_explain_a_call_naming_no_model() -> None:
    result = _explain("--country", "DE", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["request"]["model"] is None and data["action"] == "route"
    assert all(c["upstream_model"] is None for c in data["candidates"])
    text = _explain("--country", "CN")
    assert "model none named" in text.output and "DENY (rule_deny)" in text.output
