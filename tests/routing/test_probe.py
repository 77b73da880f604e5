from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from geopin.policy.decision import Endpoint, ProviderKind
from geopin.routing.health import BreakerConfig, BreakerState, HealthBoard
from geopin.routing.probe import Prober, probe_url

from .conftest import make_endpoint


class _Upstream:
    """A tiny real HTTP/1.1 server on a loopback port that can be stopped and started again."""

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for h in lines:
                if h:
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
            self.requests.append((line, headers))
            if self.hang:
                await asyncio.sleep(30)
            body = b'{"data": []}'
            writer.write(
                f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(body)}\r\n"
                "content-type: application/json\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def _probe_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("geopin-probe:")]


def test_probe_urls_follow_each_provider() -> None:
    openai = make_endpoint("a", url="https://eu.api.openai.com/v1/")
    azure = make_endpoint(
        "b", url="https://res.openai.azure.com", kind=ProviderKind.AZURE_OPENAI, api_version="v9"
    )
    anthropic = make_endpoint("c", url="https://api.anthropic.com/v1", kind=ProviderKind.ANTHROPIC)
    assert probe_url(openai) == "https://eu.api.openai.com/v1/models"
    assert probe_url(azure) == "https://res.openai.azure.com/openai/models?api-version=v9"
    assert probe_url(anthropic) == "https://api.anthropic.com/v1/models"
    assert probe_url(openai, "healthz") == "https://eu.api.openai.com/v1/healthz"
    assert probe_url(azure, lambda e: f"/status/{e.id}") == "https://res.openai.azure.com/status/b"


def test_board_opens_when_the_endpoint_stops_and_closes_when_it_returns() -> None:
    async def scenario() -> None:
        upstream = _Upstream()
        await upstream.start()
        endpoint = make_endpoint("eu-se", url=upstream.url + "/v1")
        board = HealthBoard(BreakerConfig(failure_threshold=2, cooldown_s=0.2, max_cooldown_s=0.4))
        prober = Prober(board, [endpoint], interval_s=0.05, timeout_s=1.0)
        await prober.start()
        try:
            await _until(lambda: board.snapshot(time.monotonic()).of("eu-se").successes >= 2)
            assert board.snapshot(time.monotonic()).of("eu-se").state is BreakerState.CLOSED
            assert upstream.requests[0][0] == "GET /v1/models HTTP/1.1"

            await upstream.stop()
            await _until(lambda: board.snapshot(time.monotonic()).of("eu-se").state == "open")
            health = board.snapshot(time.monotonic()).of("eu-se")
            assert health.last_error is not None and "ConnectError" in health.last_error
            assert not board.acquire("eu-se", time.monotonic())

            await upstream.start()  # same port again
            await _until(lambda: board.snapshot(time.monotonic()).of("eu-se").state == "closed")
            assert board.acquire("eu-se", time.monotonic())
        finally:
            await prober.close()
            if upstream._server is not None:
                await upstream.stop()
        assert _probe_tasks() == []

    _run(scenario)


def test_5xx_and_timeouts_fail_while_other_answers_prove_reachability() -> None:
    async def scenario() -> None:
        servers = {
            "ok": _Upstream(200),
            "unauthorised": _Upstream(401),
            "missing": _Upstream(404),
            "broken": _Upstream(503),
            "hung": _Upstream(hang=True),
        }
        for server in servers.values():
            await server.start()
        board = HealthBoard()
        prober = Prober(board, timeout_s=0.3)
        try:
            results = {}
            for name, server in servers.items():
                results[name] = await prober.probe(make_endpoint(name, url=server.url))
        finally:
            await prober.close()
            for server in servers.values():
                await server.stop()
        assert {n for n, r in results.items() if r.ok} == {"ok", "unauthorised", "missing"}
        assert results["broken"].reason == "probe got HTTP 503"
        assert results["broken"].status == 503
        assert results["hung"].reason == "probe timed out after 0.3s"
        assert results["hung"].latency_s is None
        assert results["ok"].latency_s is not None and results["ok"].latency_s < 0.3
        snap = board.snapshot(time.monotonic())
        assert snap.of("broken").failures == 1 and snap.of("broken").last_error == (
            "probe got HTTP 503"
        )
        assert snap.of("missing").successes == 1

    _run(scenario)


def test_probes_carry_only_their_own_headers_and_the_endpoint_credentials() -> None:
    async def scenario() -> None:
        upstream = _Upstream()
        await upstream.start()
        asked: list[str] = []

        def auth(endpoint: Endpoint) -> dict[str, str]:
            asked.append(endpoint.id)
            return {"authorization": f"Bearer upstream-secret-for-{endpoint.id}"}

        prober = Prober(HealthBoard(), auth_headers=auth)
        try:
            await prober.probe(make_endpoint("eu-se", url=upstream.url + "/v1"))
            await prober.probe(make_endpoint("eu-se", url=upstream.url + "/v1"))
        finally:
            await prober.close()
            await upstream.stop()
        assert asked == ["eu-se", "eu-se"]
        for _line, headers in upstream.requests:
            assert headers["authorization"] == "Bearer upstream-secret-for-eu-se"
            assert headers["user-agent"].startswith("geopin-probe/")
            allowed = {"host", "accept", "accept-encoding", "connection", "user-agent"}
            assert set(headers) <= allowed | {"authorization"}

    _run(scenario)


def test_a_failing_credential_source_is_a_failed_probe_not_a_crash() -> None:
    async def scenario() -> None:
        def auth(endpoint: Endpoint) -> dict[str, str]:
            raise OSError("secret file unreadable")

        board = HealthBoard()
        prober = Prober(board, auth_headers=auth)
        try:
            result = await prober.probe(make_endpoint("a"))
        finally:
            await prober.close()
        assert not result.ok
        assert result.reason == "probe not sent: secret file unreadable"
        assert board.snapshot(0.0).of("a").failures == 1

    _run(scenario)


def test_set_endpoints_starts_and_stops_probe_loops() -> None:
    async def scenario() -> None:
        upstream = _Upstream()
        await upstream.start()
        a = make_endpoint("a", url=upstream.url + "/a")
        b = make_endpoint("b", url=upstream.url + "/b")
        board = HealthBoard()
        prober = Prober(board, [a], interval_s=0.05)
        await prober.start()
        try:
            assert {t.get_name() for t in _probe_tasks()} == {"geopin-probe:a"}
            prober.set_endpoints([b])
            await asyncio.sleep(0)
            assert {t.get_name() for t in _probe_tasks()} == {"geopin-probe:b"}
            await _until(lambda: board.snapshot(0.0).of("b").successes >= 1)
            upstream.requests.clear()
            await asyncio.sleep(0.2)
            assert upstream.requests and all(
                line.startswith("GET /b/models") for line, _ in upstream.requests
            )
        finally:
            await prober.close()
            await upstream.stop()
        assert _probe_tasks() == []

    _run(scenario)


def test_invalid_intervals_are_refused() -> None:
    with pytest.raises(ValueError):
        Prober(HealthBoard(), interval_s=0)
    with pytest.raises(ValueError):
        Prober(HealthBoard(), jitter=1.5)
