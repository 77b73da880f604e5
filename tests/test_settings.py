"""Settings: file and environment, errors with their place, secrets hidden, docs in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from geopin.errors import ConfigError
from geopin.settings import Settings, env_names, field_descriptions, load_settings

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "geopin.yaml"
    path.write_text(text)
    return path


def test_file_then_environment_wins(tmp_path):
    path = _write(tmp_path, "listen: 0.0.0.0:9000\nupstream:\n  read_timeout_s: 30\n")
    settings = load_settings(path, {"GEOPIN_UPSTREAM_READ_TIMEOUT_S": "7.5"})
    assert settings.listen == "0.0.0.0:9000"
    assert settings.upstream.read_timeout_s == 7.5
    assert settings.upstream.connect_timeout_s == 5.0


def test_environment_lists_mappings_and_booleans():
    settings = load_settings(
        None,
        {
            "GEOPIN_TRUSTED_CDNS": "127.0.0.2, 10.0.0.0/8",
            "GEOPIN_ENDPOINT_OVERRIDES": "eu-se=http://127.0.0.1:9001/v1,us=http://x/v1",
            "GEOPIN_AUTH_ALLOW_ANONYMOUS": "true",
            "GEOPIN_GEOIP_DB": "",
        },
    )
    assert settings.trusted_cdns == ("127.0.0.2", "10.0.0.0/8")
    assert settings.endpoint_overrides == {"eu-se": "http://127.0.0.1:9001/v1", "us": "http://x/v1"}
    assert settings.auth.allow_anonymous is True
    assert settings.geoip_db is None


def test_unknown_keys_are_errors_with_file_line_and_column(tmp_path):
    path = _write(tmp_path, "listen: 127.0.0.1:1\nupstream:\n  read_timeout: 3\nlisten_on: x\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    lines = str(caught.value).splitlines()
    assert f"{path}:3:3: settings-unknown-key: unknown setting 'upstream.read_timeout'" in lines
    assert f"{path}:4:1: settings-unknown-key: unknown setting 'listen_on'" in lines


def test_invalid_values_name_their_source(tmp_path):
    path = _write(tmp_path, "workers: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"GEOPIN_LISTEN": "nowhere"})
    message = str(caught.value)
    assert f"{path}:1:1: settings-invalid: workers:" in message
    assert "$GEOPIN_LISTEN: settings-invalid: listen:" in message


def test_yaml_syntax_errors_have_their_place(tmp_path):
    path = _write(tmp_path, "listen: [\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:\d+:\d+: settings-syntax"):
        load_settings(path, {})


def test_secrets_are_never_shown(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    settings = load_settings(
        None,
        {
            "GEOPIN_ADMIN_TOKEN": "super-secret",
            "GEOPIN_AUDIT_DATABASE_URL": "postgresql://u:pw-secret@db/x",
        },
    )
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "super-secret" not in shown and "pw-secret" not in shown
    assert settings.admin_token_value() == "super-secret"
    from_file = load_settings(None, {"GEOPIN_ADMIN_TOKEN_FILE": str(token_file)})
    assert from_file.admin_token_value() == "file-token"
    assert Settings().admin_token_value() is None


def test_every_setting_has_a_distinct_environment_variable():
    names = list(env_names().values())
    assert len(names) == len(set(names))
    assert env_names()[("audit", "database_url")] == "GEOPIN_AUDIT_DATABASE_URL"
    assert env_names()[("admin_token_file",)] == "GEOPIN_ADMIN_TOKEN_FILE"


def test_docs_reference_lists_every_setting_as_the_model_has_it():
    docs = (ROOT / "docs" / "router.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `(GEOPIN_[A-Z_]+)` \|", docs, re.MULTILINE))
    model = {name: env for name, env, _default, _desc in field_descriptions()}
    assert rows == model
    for name, _env, default, description in field_descriptions():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{name}` |"))
        assert description in row, name
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if default not in (None, (), {}):
            assert f"`{default}`" in row, name


def test_the_example_file_loads_and_names_every_section():
    settings = load_settings(ROOT / "geopin.example.yaml", {})
    assert settings.listen == "0.0.0.0:8080"
    text = (ROOT / "geopin.example.yaml").read_text()
    for section in ("auth", "limits", "upstream", "probes", "reload", "audit", "telemetry"):
        assert f"\n{section}:\n" in text


def test_the_example_file_shows_every_setting():
    """README says geopin.example.yaml shows every setting: each field of the model, at every
    level, is a key in the file (and the file has no key the model lacks)."""
    from pydantic import BaseModel
    from ruamel.yaml import YAML

    from geopin.settings import Settings

    def paths(model: type[BaseModel], prefix: str = "") -> set[str]:
        out = set()
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out |= paths(kind, f"{prefix}{name}.")
            else:
                out.add(prefix + name)
        return out

    def keys(mapping: dict, prefix: str = "") -> set[str]:
        out = set()
        for name, value in mapping.items():
            if isinstance(value, dict) and value and name not in ("endpoint_overrides",):
                out |= keys(value, f"{prefix}{name}.")
            else:
                out.add(prefix + name)
        return out

    example = YAML(typ="safe").load((ROOT / "geopin.example.yaml").read_text())
    assert keys(example) == paths(Settings)
