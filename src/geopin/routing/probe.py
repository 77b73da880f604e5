"""Active health probes: an adapter that GETs each endpoint now and then and tells the board.

Probes find a dead endpoint before a client does and let an open breaker close while no client
traffic reaches it. They carry nothing of any client: a fixed path, geopin's user agent, and
only the headers the optional ``auth_headers`` callable returns for that endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from geopin import __version__
from geopin.policy.decision import Endpoint, ProviderKind
from geopin.routing.health import HealthBoard

log = logging.getLogger(__name__)

AuthHeaders = Callable[[Endpoint], Mapping[str, str]]
ProbePath = str | Callable[[Endpoint], str]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    endpoint_id: str
    ok: bool
    latency_s: float | None
    reason: str = ""
    status: int | None = None


def probe_url(endpoint: Endpoint, path: ProbePath | None = None) -> str:
    """The URL a probe GETs.

    By default the provider's model list: ``{url}/models`` for OpenAI-compatible and Anthropic
    endpoints (their url already ends in ``/v1``), ``{url}/openai/models?api-version=...`` for
    Azure OpenAI (its url is the resource). ``path`` (a string or a function of the endpoint)
    replaces the part after the url.
    """
    base = endpoint.url.rstrip("/")
    if callable(path):
        suffix = path(endpoint)
    elif path is not None:
        suffix = path
    elif endpoint.kind is ProviderKind.AZURE_OPENAI:
        suffix = "/openai/models"
        if endpoint.api_version:
            suffix += f"?api-version={endpoint.api_version}"
    else:
        suffix = "/models"
    return base + ("" if suffix.startswith("/") else "/") + suffix


class Prober:
    """Probes every endpoint every ``interval_s`` (± ``jitter``) and reports to ``board``.

    Any HTTP response below 500 means reachable (a 401 or 404 still proves the server is up);
    connect errors, timeouts and 5xx are failures. Runs on the proxy's event loop, like the
    board it feeds.
    """

    def __init__(
        self,
        board: HealthBoard,
        endpoints: Iterable[Endpoint] = (),
        *,
        interval_s: float = 10.0,
        timeout_s: float = 2.0,
        jitter: float = 0.2,
        path: ProbePath | None = None,
        auth_headers: AuthHeaders | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or not 0 <= jitter < 1:
            raise ValueError("probe interval and timeout must be positive, jitter in [0, 1)")
        self._board = board
        self._interval = interval_s
        self._timeout = timeout_s
        self._jitter = jitter
        self._path = path
        self._auth_headers = auth_headers
        self._clock = clock
        self._rng = rng or random.Random()
        self._transport = transport
        self._endpoints: dict[str, Endpoint] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._running = False
        self.set_endpoints(endpoints)

    @property
    def running(self) -> bool:
        return self._running

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Probe exactly these endpoints from now on (after a policy reload).

        Endpoints gone or changed stop being probed at once; new ones start. The board keeps
        what it knew: dropping departed endpoints from it is ``HealthBoard.forget``'s job.
        """
        new = {e.id: e for e in endpoints}
        old, self._endpoints = self._endpoints, new
        if not self._running:
            return
        for endpoint_id, task in list(self._tasks.items()):
            if new.get(endpoint_id) != old.get(endpoint_id):
                task.cancel()
                del self._tasks[endpoint_id]
        for endpoint_id in new:
            if endpoint_id not in self._tasks:
                self._spawn(endpoint_id)

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        for endpoint_id in self._endpoints:
            self._spawn(endpoint_id)

    async def close(self) -> None:
        """Stop probing and wait until every probe task has finished."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            # No .netrc credentials or environment proxies: a probe sends only what we give it.
            trust_env=False,
            # A fresh connection per probe, so each one also proves the endpoint accepts
            # connections (a pooled one can outlive a server that no longer does).
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            transport=self._transport,
        )
        return self._client

    async def probe(self, endpoint: Endpoint) -> ProbeResult:
        """Probe one endpoint once and report the outcome to the board."""
        result = await self._probe(endpoint)
        self._board.observe_probe(
            endpoint.id, result.ok, result.latency_s, self._clock(), result.reason
        )
        if not result.ok:
            log.debug("probe of endpoint %s failed: %s", endpoint.id, result.reason)
        return result

    async def probe_all(self) -> list[ProbeResult]:
        """Probe every endpoint once, concurrently (the admin API's "probe now")."""
        return list(await asyncio.gather(*(self.probe(e) for e in self._endpoints.values())))

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, endpoint_id: str) -> None:
        self._tasks[endpoint_id] = asyncio.get_running_loop().create_task(
            self._run(endpoint_id), name=f"geopin-probe:{endpoint_id}"
        )

    async def _run(self, endpoint_id: str) -> None:
        # Start at a random point of the first interval's jitter so probes do not go in bursts.
        await asyncio.sleep(self._rng.uniform(0, self._interval * max(self._jitter, 0.05)))
        while True:
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is None:
                return
            try:
                await self.probe(endpoint)
            except Exception:  # the loop outlives any one probe
                log.exception("probe of endpoint %s raised", endpoint_id)
            spread = self._interval * self._jitter
            await asyncio.sleep(self._interval + self._rng.uniform(-spread, spread))

    async def _probe(self, endpoint: Endpoint) -> ProbeResult:
        client = self._http()
        try:
            url = probe_url(endpoint, self._path)
            headers = {"user-agent": f"geopin-probe/{__version__}", "accept": "application/json"}
            if self._auth_headers is not None:
                headers.update(self._auth_headers(endpoint))
        except Exception as exc:  # a broken path or credential must not stop the probe loop
            return ProbeResult(endpoint.id, False, None, f"probe not sent: {exc}")
        started = self._clock()
        try:
            async with client.stream("GET", url, headers=headers) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return ProbeResult(endpoint.id, False, None, f"probe timed out after {self._timeout}s")
        except httpx.HTTPError as exc:
            reason = f"probe failed: {type(exc).__name__}: {exc}".rstrip(": ")
            return ProbeResult(endpoint.id, False, None, reason)
        latency = self._clock() - started
        if status >= 500:
            return ProbeResult(endpoint.id, False, latency, f"probe got HTTP {status}", status)
        return ProbeResult(endpoint.id, True, latency, "", status)
