"""Factories for the proxy tests: policies, keys, and the router and mock upstreams as real
servers on real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
import uvloop

from audit_pending import pending_rows
from geopin.app import GeopinApp, build_app
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.audit.schema import records
from geopin.keys import KeyStore
from geopin.mock.server import RunningServer, serve_in_thread
from geopin.proxy.forward import UpstreamClient
from geopin.proxy.protocol import HttpProtocol
from geopin.settings import Settings
from geopin.telemetry import Telemetry

ADMIN_TOKEN = "test-admin-token"


def endpoint_yaml(
    id: str, url: str, country: str, *, kind: str = "openai-compatible", **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": id,
        "url": url,
        "kind": kind,
        "country": country,
        "tier": "regional",
        "priority": 10,
        "models": {"gpt-4o": f"gpt-4o-{id}"},
    }
    if kind == "azure-openai":
        entry["api_version"] = "2024-10-21"
    entry.update(extra)
    return entry


DEFAULT_RULES = [
    {
        "id": "eu-in-eu",
        "from": ["EU"],
        "process_in": ["EU"],
        "reason": "EU personal data is processed in the EU",
        "legal_basis": "GDPR Chapter V",
    },
    {
        "id": "ru-deny",
        "from": ["RU"],
        "deny": True,
        "reason": "Service is not offered in Russia",
        "legal_basis": "Sanctions programme",
    },
]


def write_policy(
    directory: Path,
    endpoints: list[dict[str, Any]],
    *,
    rules: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """A policy directory: EU jurisdiction, the given endpoints and rules, US as the default."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "jurisdictions": {"EU": {"countries": ["AT", "BE", "DE", "FR", "SE", "IE"]}},
        "endpoints": endpoints,
        "rules": DEFAULT_RULES if rules is None else rules,
        "defaults": {
            "no_match": {"process_in": ["US"], "reason": "elsewhere: the US"},
            "unknown_location": {"deny": True, "reason": "location unknown"},
        },
    }
    document.update(sections)
    path = directory / "policy.yaml"
    path.write_text(json.dumps(document, indent=2))  # JSON is YAML
    return directory


@dataclass
class Router:
    """geopin on a real socket, on its own uvloop in a thread."""

    app: GeopinApp
    url: str
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server
    thread: threading.Thread
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> router key

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the router's loop (to read its pool, tasks or state) and return."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def headers(self, tenant: str | None = "t1", country: str | None = None, **extra: str):
        out = {}
        if tenant is not None:
            out["authorization"] = f"Bearer {self.keys[tenant]}"
        if country is not None:
            out["cf-ipcountry"] = country
        out.update({k.replace("_", "-"): v for k, v in extra.items()})
        return out

    def post(self, path: str = "/v1/chat/completions", *, json_body: Any = None, **kw: Any):
        body = json_body if json_body is not None else chat_body()
        return httpx.post(self.url + path, json=body, timeout=30, **kw)

    def stream(self, country: str) -> Any:
        """A streamed chat completion from a client in ``country``: a context manager giving
        the response as it comes (``httpx.stream``)."""
        return httpx.stream(
            "POST",
            self.url + "/v1/chat/completions",
            json=chat_body(stream=True),
            headers=self.headers(country=country),
            timeout=30,
        )

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def chat_body(model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def start_router(
    tmp: Path,
    policy_dir: Path,
    tenants=("t1",),
    audit: Any = None,
    with_telemetry: Telemetry | None = None,
    **settings: Any,
) -> Router:
    keys_file = tmp / "keys.json"
    keys: dict[str, str] = {}
    with KeyStore.editing(keys_file) as store:
        for tenant in tenants:
            keys[tenant] = store.create(tenant)[1]
    audit_url = f"sqlite:///{tmp / 'audit.db'}"
    engine = create_audit_engine(audit_url)
    upgrade(engine)
    engine.dispose()
    values: dict[str, Any] = {
        "policy_dir": policy_dir,
        "keys_file": keys_file,
        "trusted_cdns": ["127.0.0.1"],
        "admin_token": ADMIN_TOKEN,
        "audit": {"database_url": audit_url},
        "probes": {"enabled": False},
        "reload": {"poll_interval_s": 0},
    }
    for name, value in settings.items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    app = build_app(Settings.model_validate(values), audit=audit, telemetry=with_telemetry)
    return serve_app(app, keys)


def serve_app(app: GeopinApp, keys: dict[str, str]) -> Router:
    port, loop, server, thread = serve_on_thread(app)
    return Router(app, f"http://127.0.0.1:{port}", loop, server, thread, keys)


def serve_on_thread(
    app: Any,
) -> tuple[int, asyncio.AbstractEventLoop, uvicorn.Server, threading.Thread]:
    """``app`` under uvicorn with geopin's HTTP protocol, on a thread of its own, started: its
    port, loop, server and thread (to stop it, set ``server.should_exit`` and join the thread).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="critical", access_log=False, http=HttpProtocol, proxy_headers=False
    )
    server = uvicorn.Server(config)
    loop = uvloop.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        finally:
            sock.close()
            loop.close()

    thread = threading.Thread(target=run, daemon=True, name="geopin-router")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    return port, loop, server, thread


@pytest.fixture
def mocks() -> Iterator[Callable[..., RunningServer]]:
    """A factory of mock upstreams, all stopped at the end of the test."""
    started: list[RunningServer] = []

    def make(region: str, **options: Any) -> RunningServer:
        server = serve_in_thread(region, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def audit_records(tmp: Path) -> list[dict[str, Any]]:
    """Every record the router committed: those already sequenced, in sequence order, then
    those still pending (the router's own sequencer moves records between the two)."""
    engine = create_audit_engine(f"sqlite:///{tmp / 'audit.db'}")
    try:
        # Pending first: a record sequenced meanwhile is then found in one place or both.
        waiting = [body for _, body in pending_rows(engine)]
        with engine.connect() as conn:
            done = [
                row.body for row in conn.execute(sa.select(records.c.body).order_by(records.c.seq))
            ]
    finally:
        engine.dispose()
    seen: set[str] = set()
    out = []
    for body in [*done, *waiting]:
        if body is None:  # pruned
            continue
        record = json.loads(body)
        if record["id"] not in seen:  # a replayed copy may wait in pending meanwhile
            seen.add(record["id"])
            out.append(record)
    return out


def first_outcome(tmp: Path, deadline: float) -> dict[str, Any] | None:
    """The trail's first outcome record, waited for until ``deadline`` (``time.monotonic``):
    it is written after its response has gone."""
    while True:
        found = [r for r in audit_records(tmp) if r["kind"] == "outcome"]
        if found or time.monotonic() >= deadline:
            return found[0] if found else None
        time.sleep(0.05)


def last_request(mock: RunningServer) -> dict[str, Any] | None:
    return httpx.get(mock.url + "/_mock/last-request", timeout=10).json()["request"]


def requests_seen(mock: RunningServer) -> int:
    return httpx.get(mock.url + "/_mock/last-request", timeout=10).json()["requests"]


# -- raw upstreams: small asyncio servers that answer exactly the bytes a test gives --------


async def raw_server(handler: Callable[..., Any]) -> tuple[asyncio.Server, int]:
    """A server on a free port running ``handler(reader, writer)`` per connection, which then
    waits for the client to close its end. Returns the server and its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
            await reader.read()  # until the client closes its end
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def stop_raw(server: asyncio.Server, client: UpstreamClient) -> None:
    await client.aclose()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.01)  # the handlers see the clients' ends close
