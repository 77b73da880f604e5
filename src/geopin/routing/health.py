"""The health board: what geopin has observed about each endpoint, and its circuit breakers.

A pure state machine fed by observations (request outcomes from the proxy, probe results from
the prober). Time is always passed in as monotonic seconds, never read here, so every
transition can be tested exactly and replayed.

Per endpoint the breaker moves:

* ``closed`` -> ``open`` after ``failure_threshold`` consecutive failures, or when the failure
  rate over the last ``window_s`` seconds reaches ``failure_rate`` with at least
  ``min_requests`` outcomes in the window (passive outlier detection: an endpoint failing every
  other request never reaches the consecutive count but is still sick);
* ``open`` -> ``half_open`` once its cool-down has passed. The cool-down doubles each time the
  endpoint opens again without having stayed closed for ``max_cooldown_s`` in between, up to
  ``max_cooldown_s``;
* ``half_open`` -> ``closed`` after a success (a trial request or a probe), or back to ``open``
  after a failure. Only ``half_open_trials`` requests at a time are let through as trials.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from geopin.errors import ConfigError


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    cooldown_s: float = 5.0  # first cool-down; doubles on each repeated opening
    max_cooldown_s: float = 60.0  # cap of the cool-down, and the calm that resets the doubling
    half_open_trials: int = 1  # requests let through at a time while half-open
    ewma_alpha: float = 0.2  # weight of the newest latency sample
    window_s: float = 30.0  # failure-rate window for outlier detection
    min_requests: int = 20  # outcomes needed in the window before the rate is judged
    failure_rate: float = 0.5  # failure rate in the window that opens the breaker
    # A trial whose outcome is never reported (the client went away) frees its slot after this.
    trial_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("failure_threshold", "half_open_trials", "min_requests"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("cooldown_s", "max_cooldown_s", "window_s", "trial_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.max_cooldown_s < self.cooldown_s:
            problems.append("max_cooldown_s must not be less than cooldown_s")
        if not 0 < self.ewma_alpha <= 1:
            problems.append("ewma_alpha must be in (0, 1]")
        if not 0 < self.failure_rate <= 1:
            problems.append("failure_rate must be in (0, 1]")
        if problems:
            raise ConfigError("breaker: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """What the board knows about one endpoint at one instant."""

    state: BreakerState = BreakerState.CLOSED
    latency_ewma_s: float | None = None  # of successful requests (not probes), None until one
    consecutive_failures: int = 0
    last_error: str | None = None
    successes: int = 0
    failures: int = 0
    open_until: float | None = None  # when an open breaker turns half-open
    probe_latency_s: float | None = None  # of the last successful probe, for people
    last_probe_ok: bool | None = None

    @property
    def available(self) -> bool:
        return self.state is not BreakerState.OPEN


HEALTHY = EndpointHealth()  # an endpoint nothing is known about yet


class HealthSnapshot(Mapping[str, EndpointHealth]):
    """An immutable view of the board at time ``at``: endpoint id -> EndpointHealth.

    Only endpoints with observations are keys; ``of(id)`` answers for any endpoint, unknown ones
    being healthy.
    """

    __slots__ = ("_entries", "at")

    def __init__(self, entries: Mapping[str, EndpointHealth] | None = None, at: float = 0.0):
        self._entries: Mapping[str, EndpointHealth] = MappingProxyType(dict(entries or {}))
        self.at = at

    def of(self, endpoint_id: str) -> EndpointHealth:
        return self._entries.get(endpoint_id, HEALTHY)

    def __getitem__(self, endpoint_id: str) -> EndpointHealth:
        return self._entries[endpoint_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"HealthSnapshot(at={self.at!r}, {dict(self._entries)!r})"


class _Endpoint:
    """Mutable per-endpoint state; only the board touches it."""

    __slots__ = (
        "state",
        "latency",
        "consecutive",
        "last_error",
        "successes",
        "failures",
        "open_until",
        "opened_streak",
        "closed_since",
        "trials",
        "window",
        "probe_latency",
        "last_probe_ok",
        "view",
    )

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED  # OPEN stays stored until the next event after open_until
        self.latency: float | None = None
        self.consecutive = 0
        self.last_error: str | None = None
        self.successes = 0
        self.failures = 0
        self.open_until: float | None = None
        self.opened_streak = 0  # openings since the endpoint last stayed closed for a while
        self.closed_since: float | None = None
        self.trials: list[float] = []  # start times of half-open trials in flight
        self.window: deque[list[float]] = deque()  # [bucket start, successes, failures]
        self.probe_latency: float | None = None
        self.last_probe_ok: bool | None = None
        self.view: EndpointHealth | None = None  # cached EndpointHealth, None when stale


_BUCKETS = 10  # the failure-rate window is counted in this many time buckets


class HealthBoard:
    """Circuit breakers and latency averages for every endpoint the proxy has talked to.

    Not thread-safe: the proxy calls it from its event loop only. Every call is O(1) except
    ``snapshot`` (O(endpoints) when something changed, cached otherwise) and ``forget``.
    """

    def __init__(self, config: BreakerConfig = BreakerConfig()) -> None:  # noqa: B008 (frozen)
        self.config = config
        self._endpoints: dict[str, _Endpoint] = {}
        self._bucket_s = config.window_s / _BUCKETS
        self._snapshot: HealthSnapshot | None = None
        # The earliest time an open breaker turns half-open: the cached snapshot is stale then.
        self._next_transition = float("inf")
        # Successes since the cached snapshot that changed only counters and latency averages.
        self._drifted = False

    # -- observations -------------------------------------------------------------------------

    def observe_success(self, endpoint_id: str, latency_s: float, now: float) -> None:
        """A request to the endpoint succeeded; ``latency_s`` is its time to response headers."""
        ep = self._get(endpoint_id)
        state = ep.state
        ep.successes += 1
        ep.consecutive = 0
        alpha = self.config.ewma_alpha
        ep.latency = (
            latency_s if ep.latency is None else alpha * latency_s + (1 - alpha) * ep.latency
        )
        self._count(ep, now, ok=True)
        self._succeeded(ep, now)
        if ep.state is state:  # counters and the average only: see snapshot(max_age_s=)
            ep.view = None
            self._drifted = True
        else:
            self._changed(ep)

    def observe_failure(self, endpoint_id: str, reason: str, now: float) -> None:
        """A request to the endpoint failed (connect error, timeout, 5xx) before any byte."""
        ep = self._get(endpoint_id)
        self._failed(ep, reason, now)
        self._changed(ep)

    def observe_probe(
        self,
        endpoint_id: str,
        ok: bool,
        latency_s: float | None,
        now: float,
        reason: str = "",
    ) -> None:
        """An active probe's outcome. It drives the breaker like a request does.

        Its latency is kept apart from the request average: a probe's round trip is not
        comparable with a model's time to first byte, and mixing them would make an idle
        endpoint look faster than a busy one.
        """
        ep = self._get(endpoint_id)
        ep.last_probe_ok = ok
        if ok:
            ep.successes += 1
            ep.consecutive = 0
            if latency_s is not None:
                ep.probe_latency = latency_s
            self._count(ep, now, ok=True)
            self._succeeded(ep, now)
        else:
            self._failed(ep, reason or "probe failed", now)
        self._changed(ep)

    # -- admission ----------------------------------------------------------------------------

    def acquire(self, endpoint_id: str, now: float) -> bool:
        """May a request be sent to the endpoint now? Takes a trial slot when half-open.

        The caller must report the outcome with ``observe_success`` or ``observe_failure``; a
        trial never reported frees its slot after ``trial_timeout_s``.
        """
        ep = self._endpoints.get(endpoint_id)
        if ep is None or ep.state is BreakerState.CLOSED:
            return True
        if ep.state is BreakerState.OPEN:
            if ep.open_until is not None and now < ep.open_until:
                return False
            ep.state = BreakerState.HALF_OPEN
            ep.trials.clear()
            self._changed(ep)
        expired = now - self.config.trial_timeout_s
        if ep.trials and ep.trials[0] <= expired:
            ep.trials = [t for t in ep.trials if t > expired]
        if len(ep.trials) >= self.config.half_open_trials:
            return False
        ep.trials.append(now)
        return True

    # -- views --------------------------------------------------------------------------------

    def snapshot(self, now: float, *, max_age_s: float = 0.0) -> HealthSnapshot:
        """The board as of ``now``. Cached between changes, so cheap enough for every request.

        ``max_age_s``: a cached snapshot up to this old will do although successes have since
        moved counters and latency averages (every breaker change, every failure and every
        probe is in it at once): the router routes with one, rather than building a snapshot
        for each request when every success changes an average."""
        snap = self._snapshot
        if (
            snap is not None
            and snap.at <= now < self._next_transition
            and (not self._drifted or now - snap.at <= max_age_s)
        ):
            return snap
        entries = {}
        next_transition = float("inf")
        for endpoint_id, ep in self._endpoints.items():
            if ep.state is BreakerState.OPEN and ep.open_until is not None:
                if now >= ep.open_until:
                    # Reported half-open without changing the stored state: the trial slots are
                    # only taken by acquire().
                    entries[endpoint_id] = self._view(ep, BreakerState.HALF_OPEN)
                    continue
                next_transition = min(next_transition, ep.open_until)
            if ep.view is None:
                ep.view = self._view(ep, ep.state)
            entries[endpoint_id] = ep.view
        snap = HealthSnapshot(entries, at=now)
        self._snapshot = snap
        self._next_transition = next_transition
        self._drifted = False
        return snap

    def forget(self, keep: Iterable[str]) -> None:
        """Drop every endpoint not in ``keep`` (the catalogue after a policy reload)."""
        keep = set(keep)
        for endpoint_id in [e for e in self._endpoints if e not in keep]:
            del self._endpoints[endpoint_id]
        self._snapshot = None

    # -- transitions --------------------------------------------------------------------------

    def _get(self, endpoint_id: str) -> _Endpoint:
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            ep = self._endpoints[endpoint_id] = _Endpoint()
        return ep

    def _changed(self, ep: _Endpoint) -> None:
        ep.view = None
        self._snapshot = None

    def _succeeded(self, ep: _Endpoint, now: float) -> None:
        if ep.state is BreakerState.HALF_OPEN or (
            ep.state is BreakerState.OPEN and ep.open_until is not None and now >= ep.open_until
        ):
            self._close(ep, now)
        # A success while the cool-down runs (a request started before the breaker opened) does
        # not cut the cool-down short.

    def _failed(self, ep: _Endpoint, reason: str, now: float) -> None:
        ep.failures += 1
        ep.consecutive += 1
        ep.last_error = reason
        self._count(ep, now, ok=False)
        if ep.state is BreakerState.CLOSED:
            if ep.consecutive >= self.config.failure_threshold or self._rate_exceeded(ep, now):
                self._open(ep, now)
        elif ep.state is BreakerState.HALF_OPEN or (
            ep.open_until is not None and now >= ep.open_until
        ):
            self._open(ep, now)

    def _open(self, ep: _Endpoint, now: float) -> None:
        cfg = self.config
        if ep.closed_since is not None and now - ep.closed_since >= cfg.max_cooldown_s:
            ep.opened_streak = 0  # it stayed healthy for a while: this is a new incident
        ep.opened_streak += 1
        cooldown = min(cfg.cooldown_s * 2.0 ** (ep.opened_streak - 1), cfg.max_cooldown_s)
        ep.state = BreakerState.OPEN
        ep.open_until = now + cooldown
        ep.closed_since = None
        ep.trials.clear()
        ep.window.clear()  # judge the endpoint afresh once it is back
        self._next_transition = min(self._next_transition, ep.open_until)

    def _close(self, ep: _Endpoint, now: float) -> None:
        ep.state = BreakerState.CLOSED
        ep.open_until = None
        ep.closed_since = now
        ep.trials.clear()
        ep.window.clear()

    def _count(self, ep: _Endpoint, now: float, ok: bool) -> None:
        start = now - now % self._bucket_s
        window = ep.window
        if window and window[-1][0] == start:
            bucket = window[-1]
        else:
            bucket = [start, 0.0, 0.0]
            window.append(bucket)
            horizon = now - self.config.window_s
            while window[0][0] + self._bucket_s <= horizon:
                window.popleft()
        bucket[1 if ok else 2] += 1

    def _rate_exceeded(self, ep: _Endpoint, now: float) -> bool:
        horizon = now - self.config.window_s
        ok = failed = 0.0
        for start, s, f in ep.window:
            if start + self._bucket_s > horizon:
                ok += s
                failed += f
        total = ok + failed
        return total >= self.config.min_requests and failed / total >= self.config.failure_rate

    @staticmethod
    def _view(ep: _Endpoint, state: BreakerState) -> EndpointHealth:
        return EndpointHealth(
            state=state,
            latency_ewma_s=ep.latency,
            consecutive_failures=ep.consecutive,
            last_error=ep.last_error,
            successes=ep.successes,
            failures=ep.failures,
            open_until=ep.open_until if state is not BreakerState.CLOSED else None,
            probe_latency_s=ep.probe_latency,
            last_probe_ok=ep.last_probe_ok,
        )
