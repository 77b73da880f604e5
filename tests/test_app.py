"""Building the router and `geopin serve`: everything is checked before a socket is opened."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from click.testing import CliRunner

from geopin.app import build_app
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.cli import main
from geopin.errors import ConfigError, GeoIPError, PolicyError, SchemaOutOfDate
from geopin.settings import Settings

GOOD_POLICY = """
endpoints:
  - {id: eu-se, url: "http://127.0.0.1:9/v1", kind: openai-compatible, country: SE,
     tier: regional, models: {gpt-4o: gpt-4o}}
rules:
  - {id: all-in-se, from: [SE], process_in: [SE], reason: r}
"""


@pytest.fixture
def ready(tmp_path: Path) -> dict[str, str]:
    """Environment for a router that would start: a policy and an upgraded audit database."""
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.yaml").write_text(GOOD_POLICY)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(create_audit_engine(url))
    return {"GEOPIN_POLICY_DIR": str(policy), "GEOPIN_AUDIT_DATABASE_URL": url}


def _settings(env: dict[str, str], **extra) -> Settings:
    return Settings.model_validate(
        {"policy_dir": env["GEOPIN_POLICY_DIR"], "audit": {"database_url": env[
            "GEOPIN_AUDIT_DATABASE_URL"]}, **extra}
    )  # fmt: skip


def test_builds_from_valid_settings(ready):
    app = build_app(_settings(ready))
    assert set(app.runtime.holder.current.routes) == {"eu-se"}
    app.runtime.holder.current.resolver.close()


def test_a_router_that_would_refuse_every_request_says_so_at_start(ready, tmp_path, caplog):
    caplog.set_level("INFO", logger="geopin")
    build_app(_settings(ready)).runtime.holder.current.resolver.close()
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert any("every model API request will be refused with 401" in m for m in warned), warned
    assert any("admin API under /_geopin/ is off" in r.message for r in caplog.records)
    caplog.clear()
    keys = tmp_path / "keys.json"
    created = CliRunner().invoke(
        main, ["keys", "create", "--tenant", "t", "--keys-file", str(keys)]
    )
    assert created.exit_code == 0, created.output
    app = build_app(_settings(ready, keys_file=str(keys), admin_token="t0ken"))
    app.runtime.holder.current.resolver.close()
    assert not any("refused with 401" in r.message for r in caplog.records)
    assert not any("admin API" in r.message for r in caplog.records)


def test_what_is_loaded_at_startup_is_kept_out_of_the_cyclic_collector(ready):
    app = build_app(_settings(ready, probes={"enabled": False}))

    async def lifecycle() -> tuple[int, int]:
        await app.startup()
        frozen = gc.get_freeze_count()
        await app.shutdown()
        return frozen, gc.get_freeze_count()

    frozen, after = asyncio.run(lifecycle())
    assert frozen > 10_000  # the imports and the loaded policy: not walked by collections
    assert after == 0  # given back at shutdown (a process that builds routers again)


def test_invalid_policy_is_refused(ready):
    (Path(ready["GEOPIN_POLICY_DIR"]) / "p.yaml").write_text("rules: [{id: x, deny: maybe}]\n")
    with pytest.raises(PolicyError):
        build_app(_settings(ready))


def test_bad_geoip_file_is_refused(ready, tmp_path):
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a database")
    with pytest.raises(GeoIPError):
        build_app(_settings(ready, geoip_db=broken))


def test_out_of_date_audit_schema_is_refused(ready, tmp_path):
    with pytest.raises(SchemaOutOfDate):
        build_app(_settings({**ready, "GEOPIN_AUDIT_DATABASE_URL": f"sqlite:///{tmp_path}/n.db"}))


def test_an_overridden_endpoint_is_named_in_a_warning_at_start(ready, caplog):
    caplog.set_level("WARNING", logger="geopin")
    app = build_app(_settings(ready, endpoint_overrides={"eu-se": "http://staging:8000/v1"}))
    app.runtime.holder.current.resolver.close()
    warned = [r.getMessage() for r in caplog.records if "endpoint_overrides" in r.getMessage()]
    assert warned == [
        "endpoint_overrides send 1 endpoint(s) elsewhere than their policy url, while the trail "
        "still records each one's policy country: eu-se (SE) -> http://staging:8000/v1"
    ]


def test_overrides_must_name_endpoints_of_the_policy(ready):
    with pytest.raises(ConfigError, match="endpoint_overrides: no endpoint 'nope'"):
        build_app(_settings(ready, endpoint_overrides={"nope": "http://x/v1"}))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"GEOPIN_WORKERS": "0"}, "geopin serve: $GEOPIN_WORKERS: settings-invalid: workers:"),
        ({"GEOPIN_GEOIP_DB": "/nonexistent.mmdb"}, "geopin serve: "),
        ({"GEOPIN_AUDIT_DATABASE_URL": "sqlite:////tmp/geopin-never-upgraded-{n}.db"},
         "geopin serve: the audit database has no geopin schema yet"),
    ],
)  # fmt: skip
def test_serve_refuses_to_start_with_exit_2_and_one_line(ready, tmp_path, change, expected):
    env = {**ready, **{k: v.replace("{n}", tmp_path.name) for k, v in change.items()}}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 2
    first = result.output.splitlines()[0]
    assert first.startswith(expected), result.output


def test_serve_lists_every_policy_problem(ready):
    (Path(ready["GEOPIN_POLICY_DIR"]) / "p.yaml").write_text("rules:\n  - {id: x, frm: [DE]}\n")
    result = CliRunner().invoke(main, ["serve"], env=ready)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0].startswith("geopin serve: invalid policy (")
    assert any("p.yaml:2:" in line for line in lines[1:])


def test_serve_refuses_unknown_setting_in_its_file(ready, tmp_path):
    config = tmp_path / "geopin.yaml"
    config.write_text("listen: 127.0.0.1:0\nlisen: x\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)], env=ready)
    assert result.exit_code == 2
    assert f"{config}:2:1: settings-unknown-key" in result.output
