"""`geopin demo`: every curl line it prints behaves as printed, run as printed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

_BLOCK = re.compile(r"^#   expect: HTTP (\d{3})(?: with (.*))?\n(curl .*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def demo_output():
    process = subprocess.Popen(
        [sys.executable, "-c", "from geopin.cli import main; main()", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops the demo"):
            break
    try:
        text = "".join(lines)
        assert "Ctrl-C stops the demo" in text, text
        base = re.search(r"router on (http://\S+),", text).group(1)
        _wait_ready(base)
        yield text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


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


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_every_printed_curl_line_behaves_as_printed(demo_output: str) -> None:
    blocks = _BLOCK.findall(demo_output)
    assert len(blocks) >= 8, demo_output
    for status, text, command in blocks:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
        answer = result.stdout
        head = answer.split("\r\n", 1)[0]
        assert head.startswith(f"HTTP/1.1 {status} "), f"{command}\n-> {answer[:600]}"
        if text:
            assert text.lower() in answer.lower(), f"{command}\n-> {answer[:1500]}"


def test_the_demo_says_spoofed_headers_are_ignored(demo_output: str) -> None:
    spoof = [b for b in demo_output.split("\n\n") if "X-Forwarded-For" in b]
    assert spoof and "ignored" in spoof[0]
    assert "--interface" not in spoof[0]  # sent from 127.0.0.1, which nothing trusts
