"""`geopin serve` as a real process: the drain on SIGTERM with a stream open, and several
workers sharing one audit database."""

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

from audit_pending import pending_rows
from geopin.audit.db import create_audit_engine
from geopin.audit.journal import journal_dir
from geopin.audit.migrate import upgrade
from geopin.audit.schema import object_homes, records
from geopin.audit.store import pending_count
from geopin.keys import KeyStore

from .conftest import chat_body, endpoint_yaml, write_policy

pytestmark = pytest.mark.slow

ADMIN = "serve-admin-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A `geopin serve` subprocess and what it needs: settings file, keys, audit database."""

    def __init__(
        self,
        tmp: Path,
        upstream_url: str,
        *,
        workers: int = 1,
        catalogue: list[dict[str, Any]] | None = None,
        **settings: Any,
    ):
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        catalogue = catalogue or [endpoint_yaml("eu-se", upstream_url + "/v1", "SE")]
        policy = write_policy(tmp / "policy", catalogue)
        keys_file = tmp / "keys.json"
        with KeyStore.editing(keys_file) as store:
            self.key = store.create("t1")[1]
        self.db = f"sqlite:///{tmp / 'audit.db'}"
        engine = create_audit_engine(self.db)
        upgrade(engine)
        engine.dispose()
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "workers": workers,
            "policy_dir": str(policy),
            "keys_file": str(keys_file),
            "trusted_cdns": ["127.0.0.1"],
            "admin_token": ADMIN,
            "probes": {"enabled": False},
            "reload": {"poll_interval_s": 0},
            "audit": {"database_url": self.db},
            **settings,
        }
        (tmp / "geopin.yaml").write_text(json.dumps(config))
        self.stderr = open(tmp / "stderr.log", "w+b")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPIN_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "geopin", "serve", "--config", str(tmp / "geopin.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(self.url + "/_geopin/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("geopin serve did not become ready\n" + self.log())

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}", "cf-ipcountry": "SE"}

    def log(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "geopin.access":
                out.append(entry)
        return out

    def audit(self) -> list[dict[str, Any]]:
        """Every record in the database, sequenced or still pending."""
        engine = create_audit_engine(self.db)
        try:
            bodies: list[bytes | None] = [body for _, body in pending_rows(engine)]
            with engine.connect() as conn:
                bodies += [r[0] for r in conn.execute(sa.select(records.c.body))]
        finally:
            engine.dispose()
        # A sequenced record stays in the inbox until swept: one copy of each.
        unique = {json.loads(body)["id"]: body for body in bodies if body is not None}
        return [json.loads(body) for body in unique.values()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # drained: every worker goes with it
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.stderr.close()


@pytest.fixture
def served(tmp_path):
    started: list[Served] = []

    def start(upstream_url: str, **kw: Any) -> Served:
        server = Served(tmp_path, upstream_url, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_sigterm_drains_an_open_stream_and_exits_zero(served, mocks):
    # 8 events 250 ms apart: the stream is still running well after SIGTERM.
    upstream = mocks("eu-se", chunk_delay_ms=250)
    router = served(upstream.url, shutdown_grace_s=15)
    events: list[bytes] = []
    head: dict[str, str] = {}
    first_event = threading.Event()
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            body = chat_body(stream=True)
            with httpx.stream(
                "POST",
                router.url + "/v1/chat/completions",
                json=body,
                headers=router.headers(),
                timeout=30,
            ) as response:
                head.update(response.headers)
                head["status"] = str(response.status_code)
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        events.append(line.encode())
                        first_event.set()
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)
            first_event.set()

    client = threading.Thread(target=stream)
    client.start()
    assert first_event.wait(20) and not failure, failure
    signalled = time.monotonic()
    router.process.send_signal(signal.SIGTERM)

    # While the stream drains: not ready, and new requests are turned away.
    time.sleep(0.3)
    assert client.is_alive(), "the stream ended before the drain could be observed"
    ready = httpx.get(router.url + "/_geopin/readyz", timeout=5)
    assert ready.status_code == 503
    try:
        refused = httpx.post(
            router.url + "/v1/chat/completions",
            json=chat_body(),
            headers=router.headers(),
            timeout=5,
        )
    except httpx.ConnectError:
        pass  # refused outright is as good
    else:
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers["connection"] == "close"

    client.join(30)
    assert not failure, failure
    assert head["status"] == "200"
    assert events[-1] == b"data: [DONE]", events[-3:]
    assert router.process.wait(30) == 0, router.log()
    assert time.monotonic() - signalled < 15

    decision_id = head["x-geopin-decision-id"]
    kinds = {r["kind"] for r in router.audit() if r.get("decision_id") == decision_id}
    assert kinds == {"decision", "outcome"}, router.audit()
    outcome = next(
        r for r in router.audit() if r.get("decision_id") == decision_id and r["kind"] == "outcome"
    )
    assert outcome["status"] == 200
    # The access line, batched, was written on the way out.
    assert decision_id in {line.get("decision_id") for line in router.access_lines()}


def test_sigterm_when_idle_exits_zero_at_once(served, mocks):
    router = served(mocks("eu-se").url, shutdown_grace_s=20)
    response = httpx.post(
        router.url + "/v1/chat/completions", json=chat_body(), headers=router.headers(), timeout=10
    )
    assert response.status_code == 200
    started = time.monotonic()
    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(20) == 0, router.log()
    assert time.monotonic() - started < 10  # nothing in flight: no waiting for the grace


def test_two_workers_share_the_audit_database(served, mocks):
    router = served(mocks("eu-se").url, workers=2, telemetry={"prometheus": True})
    seen: set[int] = set()
    decisions: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 40

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= 2 and len(decisions) >= 40:
                    return
            # A new connection each time, so the kernel can hand it to either worker.
            response = httpx.post(
                router.url + "/v1/chat/completions",
                json=chat_body(),
                headers=router.headers() | {"connection": "close"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            with lock:
                decisions.append(response.headers["x-geopin-decision-id"])
                seen.update(line["pid"] for line in router.access_lines())

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 2, f"only worker(s) {seen} answered"

    # The scrape shows both workers' series, whichever worker answers it (a worker leaves
    # its snapshot for the other on each scrape it answers and every few seconds).
    expected = {str(pid) for pid in seen}
    workers: set[str] = set()
    deadline = time.monotonic() + 20
    while workers != expected and time.monotonic() < deadline:
        scrape = httpx.get(
            router.url + "/_geopin/metrics",
            headers={"authorization": f"Bearer {ADMIN}", "connection": "close"},
            timeout=10,
        )
        assert scrape.status_code == 200
        workers = {
            line.split('worker="', 1)[1].split('"', 1)[0]
            for line in scrape.text.splitlines()
            if line.startswith("geopin_requests_total{")
        }
        time.sleep(0.2)
    assert workers == expected

    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(40) == 0, router.log()
    recorded = {r["decision_id"] for r in router.audit() if r["kind"] == "decision"}
    assert set(decisions) <= recorded
    outcomes = {r["decision_id"] for r in router.audit() if r["kind"] == "outcome"}
    assert set(decisions) <= outcomes
    # Each worker wrote the access lines it still held in a batch before it exited.
    logged = {line.get("decision_id") for line in router.access_lines()}
    assert set(decisions) <= logged


def test_an_object_made_through_one_worker_is_found_through_the_other(served, mocks):
    """Each call on a new connection, so the kernel hands it to either worker: the reads that
    reach the worker which did not see the response made find it in the database's table."""
    se, fr = mocks("eu-se"), mocks("eu-fr")
    catalogue = [
        endpoint_yaml("eu-se", se.url + "/v1", "SE"),
        # Serves "small" alone and is nobody's home: a read routed as before goes to eu-se.
        endpoint_yaml("eu-fr", fr.url + "/v1", "FR", priority=15, models={"small": "small-x"}),
    ]
    # Access lines written at once: which worker answered is known as soon as it has.
    router = served(se.url, workers=2, catalogue=catalogue, telemetry={"access_log_flush_s": 0})
    headers = router.headers() | {"connection": "close"}
    made: dict[str, str] = {}  # response id -> decision id of the call that made it
    for _ in range(12):
        answer = httpx.post(
            router.url + "/v1/responses",
            json={"model": "small", "input": "x"},
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 200, (answer.text, router.log()[-3000:])
        assert answer.headers["x-geopin-endpoint"] == "eu-fr"
        made[answer.json()["id"]] = answer.headers["x-geopin-decision-id"]
    engine = create_audit_engine(router.db)
    count = sa.select(sa.func.count()).select_from(object_homes)
    try:  # the rows are written off the request path: wait for them
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(count).scalar() == 12:
                    break
            time.sleep(0.05)
    finally:
        engine.dispose()
    # The kernel hands each new connection to either worker, not always evenly: read every
    # response again until some read has reached the worker that did not make it.
    crossed: list[str] = []
    for _ in range(20):
        read: dict[str, str] = {}
        for ident in made:
            answer = httpx.get(router.url + f"/v1/responses/{ident}", headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-geopin-endpoint"] == "eu-fr" and answer.json()["id"] == ident
            read[ident] = answer.headers["x-geopin-decision-id"]
        wanted = {*made.values(), *read.values()}
        deadline = time.monotonic() + 10  # a line is written just after its answer
        while True:
            pid = {line["decision_id"]: line["pid"] for line in router.access_lines()}
            if wanted <= pid.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        crossed = [ident for ident in made if pid[made[ident]] != pid[read[ident]]]
        if crossed:
            break
    assert crossed, "every read reached the worker that made its response"
    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(40) == 0, router.log()


def _two_workers(router: Served, *, past_early_death: bool = False) -> list[int]:
    """The pids of the router's two workers once both run; ``past_early_death``: also wait
    until they are older than the supervisor's early-death window, so that one that dies is
    replaced rather than stopping the server."""
    deadline = time.monotonic() + 30
    while len(workers := _worker_pids(router.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2, workers
    if past_early_death:
        time.sleep(11)
    return workers


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    out = []
    for pid in map(int, children):
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in command and b"resource_tracker" not in command:
            out.append(pid)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it yet


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_the_workers_of_a_killed_supervisor_drain_and_exit(served, mocks):
    """SIGKILL leaves nobody to pass SIGTERM on: the workers notice their parent is gone and
    drain as on SIGTERM, instead of serving on, unsupervised, on the port."""
    router = served(mocks("eu-se").url, workers=2)
    workers = _two_workers(router)
    answer = httpx.post(
        router.url + "/v1/chat/completions", json=chat_body(), headers=router.headers(), timeout=10
    )
    assert answer.status_code == 200, answer.text
    router.process.kill()
    router.process.wait(10)
    deadline = time.monotonic() + 30
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "workers still running after their supervisor died"
    assert router.log().count("is gone: draining and exiting") == 2
    with pytest.raises(httpx.TransportError):
        httpx.get(router.url + "/_geopin/healthz", timeout=2)


def test_an_admin_reload_reaches_every_worker(served, mocks, tmp_path):
    """File polling is off here, so only the admin call can tell the workers."""
    upstream = mocks("eu-se").url
    router = served(upstream, workers=2)
    write_policy(
        tmp_path / "policy",
        [endpoint_yaml("eu-se", upstream + "/v1", "SE")],
        rules=[{"id": "se-closed", "from": ["SE"], "deny": True, "reason": "closed"}],
    )
    admin = {"authorization": f"Bearer {ADMIN}", "connection": "close"}
    answer = httpx.post(router.url + "/_geopin/reload", headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["other_workers_asked"] is True
    time.sleep(2)  # the other worker's reload runs when the supervisor's SIGHUP reaches it
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + 30
    pids: set[int] = set()
    while time.monotonic() < deadline and (len(pids) < 2 or len(statuses) < 20):
        response = httpx.post(
            router.url + "/v1/chat/completions",
            json=chat_body(),
            headers=router.headers() | {"connection": "close"},  # either worker may take it
            timeout=10,
        )
        statuses[response.headers["x-geopin-decision-id"]] = response.status_code
        time.sleep(0.05)
        lines = router.access_lines()
        pids = {line["pid"] for line in lines if line.get("decision_id") in statuses}
    assert len(pids) == 2, f"only worker(s) {pids} answered"
    assert set(statuses.values()) == {451}, statuses


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_a_killed_workers_journal_is_sequenced_by_the_workers_that_live(served, mocks):
    """SIGKILL one of two workers under load: the records it had only in its journal are
    moved into the log by a living worker's sequencer, with nobody restarting anything by
    hand, and every answered request's decision is sequenced once."""
    router = served(mocks("eu-se").url, workers=2)
    workers = _two_workers(router, past_early_death=True)
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                response = httpx.post(
                    router.url + "/v1/chat/completions",
                    json=chat_body(),
                    headers=router.headers() | {"connection": "close"},
                    timeout=10,
                )
            except httpx.TransportError:  # in flight at the dead worker
                continue
            if response.status_code == 200:
                answered.append(response.headers["x-geopin-decision-id"])

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        while len(answered) < 300:
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    engine = create_audit_engine(router.db)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if not pending_count(conn):
                    break
            time.sleep(0.1)
        with engine.connect() as conn:
            assert pending_count(conn) == 0
            sequenced = list(
                conn.scalars(sa.select(records.c.decision_id).where(records.c.kind == "decision"))
            )
    finally:
        engine.dispose()
    assert set(answered) <= set(sequenced) and len(sequenced) == len(set(sequenced))
    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(40) == 0, router.log()
    assert list(journal_dir(router.db.removeprefix("sqlite:///")).iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_sigterm_while_a_replacement_worker_starts_exits_zero(served, mocks):
    """A worker started to replace a dead one has not taken SIGTERM over for a second or so:
    the signal passed on kills it, which is a clean stop (it served nothing), not a failure."""
    router = served(mocks("eu-se").url, workers=2)
    workers = _two_workers(router, past_early_death=True)
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "starting another" not in router.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    router.process.send_signal(signal.SIGTERM)
    assert router.process.wait(40) == 0, router.log()
    assert "stopped while starting" in router.log(), router.log()
