"""LiteLLM proxy as a benchmark target: its config, command line and environment.

Imported by ``bench/proxy_bench.py``; ``run.sh`` installs LiteLLM and calls the benchmark.
"""

from __future__ import annotations

from pathlib import Path

REGION = "eu"


def config_text(upstream: str, master_key: str, region_checks: bool) -> str:
    # region_name / allowed_model_region only take effect with enable_pre_call_checks.
    region_line = f"      region_name: {REGION}\n" if region_checks else ""
    router = "router_settings:\n  enable_pre_call_checks: true\n" if region_checks else ""
    return (
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-mock-upstream\n"
        f"{region_line}"
        f"{router}"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )


def prepare(
    venv: Path, upstream: str, port: int, workdir: Path, master_key: str, region_checks: bool
) -> tuple[list[str], dict[str, str], dict]:
    """Write the config; return the command, its environment and extra request body fields."""
    executable = venv / "bin" / "litellm"
    if not executable.exists():
        raise SystemExit(f"{executable} is missing: run bench/litellm/run.sh to install LiteLLM")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(config_text(upstream, master_key, region_checks))
    command = [
        str(executable),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches a price list at start
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
        "NO_PROXY": "*",
    }
    extra = {"allowed_model_region": REGION} if region_checks else {}
    return command, env, extra
