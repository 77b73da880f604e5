"""The README's commands work as shown, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    nxt = README.find("\n### ", start + len(title))
    ends = [e for e in (end, nxt) if e != -1]
    return README[start : min(ends) if ends else len(README)]


def _blocks(text: str, lang: str = "sh") -> list[str]:
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    return [body for kind, body in fenced if kind == lang]


def _env() -> dict[str, str]:
    # The geopin of this interpreter's environment first on PATH, as after `. .venv/bin/activate`.
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def test_the_two_commands_open_the_readme_and_ci_runs_the_test_command() -> None:
    first, second = _blocks(_section("## Two commands"))
    assert first.strip().endswith("geopin demo")
    assert second.strip().endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.strip() in ci.splitlines()


def test_the_policy_commands_succeed() -> None:
    commands = _blocks(_section("### Policies"))[0].strip().splitlines()
    assert len(commands) >= 4
    for command in commands:
        result = _run(command, ROOT)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


def test_the_broken_policy_gives_the_errors_shown(tmp_path: Path) -> None:
    setup = _blocks(_section("### Policies"))[1]
    shown = _blocks(_section("### Policies"), "")[0].strip().splitlines()
    script = setup.replace("/tmp/broken", str(tmp_path / "broken"))
    result = _run(script, ROOT)
    assert result.returncode == 1
    got = (result.stderr + result.stdout).replace(str(tmp_path / "broken"), "/tmp/broken")
    assert got.strip().splitlines() == shown


_DECISION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_router_commands_run_from_the_repository_root_and_answer_as_shown(
    tmp_path: Path,
) -> None:
    """The section's script, run as shown in a copy of the repository's policies and example
    settings; only the port differs (GEOPIN_LISTEN, which the settings honour)."""
    section = _section("### The router")
    script = _blocks(section)[0]
    shown = _blocks(section, "")[0].strip().splitlines()
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    shutil.copy(ROOT / "geopin.example.yaml", tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "localhost:8080" in script
    result = subprocess.run(
        ["bash", "-c", script.replace("localhost:8080", f"127.0.0.1:{port}")],
        cwd=tmp_path,
        env={**_env(), "GEOPIN_LISTEN": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = [line.rstrip("\r") for line in result.stdout.splitlines()]
    for line in shown:  # a decision id stands for any decision id
        pattern = _DECISION_ID.pattern.join(map(re.escape, _DECISION_ID.split(line)))
        assert any(re.fullmatch(pattern, got) for got in answer), (line, result.stdout)
    assert (tmp_path / "geopin-keys.json").exists()
    assert (tmp_path / "geopin-audit.db").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_decision_trail_walkthrough(tmp_path: Path) -> None:
    trail = _section("### The decision trail")
    start, query, tamper, prove = _blocks(trail)
    demo = subprocess.Popen(
        [*shlex.split(start.strip()), "--port", "0"],
        cwd=tmp_path,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        printed = _read_until(demo, "Ctrl-C stops the demo")
        curl = next(line for line in printed.splitlines() if line.startswith("curl "))
        _wait_ready(re.search(r"router on (http://\S+),", printed).group(1))
        answer = _run(curl, tmp_path).stdout
        decision_id = re.search(r"x-geopin-decision-id: (\S+)", answer, re.I).group(1)
        _wait_for_checkpoint(tmp_path / "demo-data" / "checkpoints.txt")
        for command in query.strip().splitlines():
            result = _run(command, tmp_path)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert decision_id in _run(query.splitlines()[0], tmp_path).stdout
        lines = tamper.strip().splitlines()
        assert _run(lines[0], tmp_path).returncode == 0
        verify = _run(lines[1], tmp_path)
        assert verify.returncode == 1
        assert "FAIL [column_mismatch] seq 0: column processing_country='US'" in verify.stdout
        for command in prove.strip().replace("DECISION_ID", decision_id).splitlines():
            result = _run(command, tmp_path)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(marker):
            return "".join(lines)
    raise AssertionError("".join(lines))


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + "/_geopin/readyz"],
            capture_output=True,
            text=True,
        )
        if result.stdout == "200":
            return
        time.sleep(0.1)
    raise AssertionError("the demo router never became ready")


def _wait_for_checkpoint(path: Path) -> None:
    # The demo signs a checkpoint a second after new records; outcomes follow the response.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and "\n2\n" in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint covering the request in {path}")
