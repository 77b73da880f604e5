"""The decision trail through a real router: every answered request has its record, sequenced
into the Merkle log and covered by a signed checkpoint, after a clean shutdown and after the
router is killed with SIGKILL under load."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from geopin.app import build_app
from geopin.audit.checkpoint import SigningKey
from geopin.audit.checkpoint_file import CheckpointFile
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.audit.schema import checkpoints, records
from geopin.audit.sequencer import Sequencer
from geopin.audit.store import pending_count
from geopin.audit.verify import format_report, verify_log
from geopin.cli import main as cli
from geopin.keys import KeyStore
from geopin.mock_upstream import serve_in_thread
from geopin.settings import Settings

from .conftest import chat_body, endpoint_yaml, serve_app, write_policy

KEY_NAME = "audit.test/geopin"


def _trail(tmp: Path, database_url: str) -> dict[str, Any]:
    """A migrated audit database, a signing key, a router key and a mock-backed policy."""
    engine = create_audit_engine(database_url)
    upgrade(engine)
    engine.dispose()
    key = SigningKey.generate(KEY_NAME)
    key.save(tmp / "audit.key")
    mock = serve_in_thread("eu")
    policy_dir = write_policy(tmp / "policy", [endpoint_yaml("eu-fra", mock.url + "/v1", "FR")])
    keys_file = tmp / "keys.json"
    with KeyStore.editing(keys_file) as store:
        router_key = store.create("t1")[1]
    return {
        "key": key,
        "mock": mock,
        "router_key": router_key,
        "settings": {
            "policy_dir": str(policy_dir),
            "keys_file": str(keys_file),
            "trusted_cdns": ["127.0.0.1"],
            "probes": {"enabled": False},
            "reload": {"poll_interval_s": 0},
            "audit": {
                "database_url": database_url,
                "signing_key": str(tmp / "audit.key"),
                "checkpoint_file": str(tmp / "checkpoints"),
                "checkpoint_interval_s": 0.05,
            },
        },
    }


def _headers(router_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {router_key}", "cf-ipcountry": "FR"}


def _decision_seqs(engine, decision_ids: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    ids = sorted(decision_ids)
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(records.c.decision_id, records.c.seq).where(
                    records.c.kind == "decision",
                    records.c.decision_id.in_(ids[start : start + 500]),
                )
            )
            found.update({row.decision_id: int(row.seq) for row in rows})
    return found


def _counts(engine) -> tuple[int, int, int]:
    """(pending records, sequenced records, size of the latest signed checkpoint)."""
    with engine.connect() as conn:
        waiting = pending_count(conn)
        sequenced = conn.scalar(sa.select(sa.func.count()).select_from(records))
        signed = conn.scalar(sa.select(sa.func.max(checkpoints.c.size)))
    return int(waiting or 0), int(sequenced or 0), int(signed or 0)


def _verify_with_the_cli(database_url: str, key: SigningKey, checkpoint_file: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "audit",
            "verify",
            "--db",
            database_url,
            "--public-key",
            key.verifier().text(),
            "--checkpoints",
            str(checkpoint_file),
        ],
    )
    assert result.exit_code == 0, result.output


def test_a_proxied_request_is_sequenced_and_signed_by_the_router(tmp_path, database_url):
    trail = _trail(tmp_path, database_url)
    app = build_app(Settings.model_validate(trail["settings"]))
    assert app.sequencer is not None
    router = serve_app(app, {"t1": trail["router_key"]})
    engine = create_audit_engine(database_url)
    try:
        response = httpx.post(
            router.url + "/v1/chat/completions",
            json=chat_body(),
            headers=_headers(trail["router_key"]),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        decision_id = response.headers["x-geopin-decision-id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the router's own sequencer, no shutdown needed
            seqs = _decision_seqs(engine, {decision_id})
            if seqs and _counts(engine)[2] > seqs[decision_id]:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"decision {decision_id} was not sequenced and signed: {_counts(engine)}")
    finally:
        router.stop()
        trail["mock"].stop()
    waiting, sequenced, signed = _counts(engine)
    assert waiting == 0 and sequenced == signed >= 2  # the outcome record too, at shutdown
    notes = CheckpointFile(tmp_path / "checkpoints").read()
    assert trail["key"].verifier().open(notes[-1]).size == signed
    engine.dispose()
    _verify_with_the_cli(database_url, trail["key"], tmp_path / "checkpoints")


def test_a_clean_shutdown_sequences_and_signs_every_acknowledged_record(tmp_path, database_url):
    trail = _trail(tmp_path, database_url)
    trail["settings"]["audit"]["checkpoint_interval_s"] = 3600  # only the final one is due
    trail["settings"]["audit"]["checkpoint_every"] = 1_000_000
    router = serve_app(
        build_app(Settings.model_validate(trail["settings"])), {"t1": trail["router_key"]}
    )
    answered = set()
    try:
        with httpx.Client(headers=_headers(trail["router_key"]), timeout=30) as client:
            for _ in range(20):
                response = client.post(router.url + "/v1/chat/completions", json=chat_body())
                assert response.status_code == 200
                answered.add(response.headers["x-geopin-decision-id"])
    finally:
        router.stop()
        trail["mock"].stop()
    engine = create_audit_engine(database_url)
    assert set(_decision_seqs(engine, answered)) == answered
    waiting, sequenced, signed = _counts(engine)
    assert waiting == 0 and sequenced == signed == 40  # decisions and outcomes
    engine.dispose()
    _verify_with_the_cli(database_url, trail["key"], tmp_path / "checkpoints")


# ---- SIGKILL under load -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_serve(tmp: Path, settings: dict[str, Any]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    config = tmp / "geopin.yaml"
    config.write_text(json.dumps({**settings, "listen": f"127.0.0.1:{port}"}))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPIN_")}
    with (tmp / "serve.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "geopin", "serve", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"geopin serve exited: {(tmp / 'serve.log').read_text()}")
        try:
            if httpx.get(url + "/_geopin/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    pytest.fail("geopin serve did not become ready")


def _load(url: str, headers: dict[str, str], stop: threading.Event, out: set[str]) -> None:
    """Send requests until ``stop`` or the router dies; keep the decision ids answered 200."""
    with httpx.Client(headers=headers, timeout=10) as client:
        for _ in range(2_000):
            if stop.is_set():
                return
            try:
                response = client.post(url + "/v1/chat/completions", json=chat_body())
            except httpx.TransportError:
                return  # killed
            if response.status_code == 200:
                out.add(response.headers["x-geopin-decision-id"])


@pytest.mark.slow
def test_every_answered_request_survives_sigkill_under_load(tmp_path, database_url):
    trail = _trail(tmp_path, database_url)
    process, url = _start_serve(tmp_path, trail["settings"])
    stop = threading.Event()
    answered: list[set[str]] = [set() for _ in range(8)]
    workers = [
        threading.Thread(target=_load, args=(url, _headers(trail["router_key"]), stop, ids))
        for ids in answered
    ]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 8
        while sum(map(len, answered)) < 400 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        process.wait(10)
        stop.set()
        for worker in workers:
            worker.join(15)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
        trail["mock"].stop()
    acknowledged = set().union(*answered)
    assert len(acknowledged) >= 100, "too little load reached the router to prove anything"

    engine = create_audit_engine(database_url)
    try:
        Sequencer(
            engine,
            signing_key=SigningKey.load(tmp_path / "audit.key"),
            checkpoint_file=tmp_path / "checkpoints",
        ).run_once(force_checkpoint=True, wait=True)
        missing = acknowledged - set(_decision_seqs(engine, acknowledged))
        assert not missing, f"{len(missing)} answered requests have no decision record"
        assert _counts(engine)[0] == 0
        report = verify_log(
            engine,
            verifier=trail["key"].verifier(),
            checkpoint_file=str(tmp_path / "checkpoints"),
        )
        assert report.ok, format_report(report)
    finally:
        engine.dispose()
