"""Factories for policy tests: policy files written from dicts or text, compiled policies and
request contexts, each with keyword overrides on a small base."""

from __future__ import annotations

import copy
import json
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.compile import CompiledPolicy
from geopin.policy.decision import RequestContext
from geopin.policy.loader import load_policy, load_with_problems
from geopin.policy.problems import Problem, Severity

POLICY_FILE = "policy.yaml"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Problems name files relative to the working directory: "policy.yaml:3:5".
    monkeypatch.chdir(tmp_path)


def endpoint(id: str, country: str, **overrides: Any) -> dict[str, Any]:
    """One endpoint entry; serves gpt-4o unless ``models`` says otherwise."""
    fields: dict[str, Any] = {
        "id": id,
        "url": f"https://{id}.example/v1",
        "kind": "openai-compatible",
        "country": country,
        "models": {"gpt-4o": None},
    }
    fields.update(overrides)
    return fields


def rule(id: str, **overrides: Any) -> dict[str, Any]:
    """One rule entry. ``from_`` stands for the YAML key ``from``; a rule constrains to
    ``process_in: [EEA]`` unless given ``process_in`` or ``deny``."""
    fields: dict[str, Any] = {"id": id}
    if "from_" in overrides:
        fields["from"] = overrides.pop("from_")
    fields.update(overrides)
    if "process_in" not in fields and not fields.get("deny"):
        fields["process_in"] = ["EEA"]
    if fields.get("deny") and "reason" not in fields:
        fields["reason"] = f"denied by {id}"
    return fields


def base_policy() -> dict[str, Any]:
    """A small policy: a few jurisdictions, endpoints in several countries (one with a data
    zone reaching into CH, one in a subdivision, one at the edge), one rule and defaults."""
    return {
        "jurisdictions": {
            "EEA": {"countries": ["DE", "FR", "IE", "NL", "SE"]},
            "NORTH_AMERICA": {"countries": ["US", "CA"]},
            "QUEBEC": {"subdivisions": ["CA-QC"]},
        },
        "endpoints": [
            endpoint(
                "de-regional", "DE", priority=10, models={"gpt-4o": "gpt-4o-de", "small": None}
            ),
            endpoint("se-regional", "SE", priority=10),
            endpoint("ie-zone", "IE", tier="central", priority=50, may_process_in=["CH"]),
            endpoint(
                "fr-central",
                "FR",
                tier="central",
                priority=20,
                models={"gpt-4o": None, "small": None},
            ),
            endpoint("nl-edge", "NL", tier="edge", priority=10, models={"small": None}),
            endpoint("ch-regional", "CH", priority=10),
            endpoint(
                "us-east",
                "US",
                subdivision="US-VA",
                priority=10,
                models={"gpt-4o": None, "small": None},
            ),
            endpoint("ca-qc", "CA", subdivision="CA-QC", priority=10),
        ],
        "models": {"small": {"prefer_tier": "edge"}},
        "data_classes": ["public", "internal", "pii"],
        "rules": [rule("eea-in-eea", from_=["EEA"], process_in=["EEA"])],
        "defaults": {
            "data_class": "internal",
            "unknown_location": {"deny": True, "reason": "location unknown"},
            "no_match": {"process_in": ["EEA", "NORTH_AMERICA", "CH"], "reason": "elsewhere"},
        },
    }


def policy_data(**overrides: Any) -> dict[str, Any]:
    """The base policy with whole sections replaced; a section given as None is left out."""
    data = base_policy()
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = copy.deepcopy(value)
    return data


def dump_yaml(data: dict[str, Any]) -> str:
    # JSON is YAML (1.2), and much quicker to write and read than block style.
    return json.dumps(data, indent=2)


def write_policy(directory: Path, name: str = POLICY_FILE, **sections: Any) -> Path:
    """Write ``sections`` (dicts, exactly as given: no base) as one YAML file; return the
    directory, ready for the loader."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(dump_yaml(sections), encoding="utf-8")
    return directory


def write_text(directory: Path, text: str, name: str = POLICY_FILE) -> Path:
    """Write raw YAML text (dedented; line 1 is the first non-empty line); return the
    directory. For tests that check positions line by line."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return directory


def make_policy(**overrides: Any) -> CompiledPolicy:
    """The base policy with sections overridden (see ``policy_data``), loaded and compiled.
    Raises PolicyError when the result is invalid."""
    return load_data(policy_data(**overrides))


def load_data(*files: dict[str, Any]) -> CompiledPolicy:
    """Write each dict as its own file (in this order) and load the directory."""
    with tempfile.TemporaryDirectory() as folder:
        for i, sections in enumerate(files):
            write_policy(Path(folder), f"{i:02d}.yaml", **sections)
        return load_policy(folder)


def make_context(
    country: str | None = "DE", subdivision: str | None = None, **overrides: Any
) -> RequestContext:
    """A request from ``country`` (None: an unknown location; a subdivision sets its own
    country) for gpt-4o, with no tenant and no declared data class unless overridden."""
    if subdivision is not None:
        country = subdivision.split("-")[0]
    location = (
        UNKNOWN if country is None else Location(country, subdivision, LocationSource.DECLARED)
    )
    fields: dict[str, Any] = {"location": location, "model": "gpt-4o"}
    fields.update(overrides)
    return RequestContext(**fields)


def problems_in(text: str, name: str = POLICY_FILE, directory: Path | None = None) -> list[Problem]:
    """Every problem the loader reports for a policy written as ``text``."""
    folder = write_text(directory or Path.cwd(), text, name)
    return load_with_problems(folder)[1]


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity is Severity.ERROR]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity is Severity.WARNING]


def with_code(problems: list[Problem], code: str) -> list[Problem]:
    return [p for p in problems if p.code == code]


def shown(problem: Problem) -> tuple[str, str, str, str | None]:
    """What an author sees of a problem: where, the code, the message and the hint."""
    return (str(problem.position), problem.code, problem.message, problem.hint)
