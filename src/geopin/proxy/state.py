"""The runtime state a request is served under: built whole, swapped whole, never changed.

A request reads ``holder.current`` once and keeps that snapshot to its end, so in-flight
requests finish under the policy, GeoIP data and keys they started with while a reload swaps
in the next state for new requests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from geopin.audit.records import DecisionEncoder
from geopin.errors import ConfigError, GeoIPError, GeopinError, PolicyError
from geopin.geo.client import TrustConfig
from geopin.geo.resolvers import Resolver, open_resolver
from geopin.keys import KeyStore
from geopin.policy.decision import CredentialRef
from geopin.policy.loader import load_policy, policy_files
from geopin.proxy.forward import UpstreamClient
from geopin.proxy.later import Later
from geopin.proxy.objects import ObjectHomes
from geopin.proxy.upstream import Route, prepare_route
from geopin.proxy.watch import HeadWatch
from geopin.routing.health import HealthBoard, HealthSnapshot
from geopin.routing.select import OrderMemo
from geopin.telemetry.providers import Telemetry

if TYPE_CHECKING:
    from geopin.policy.compile import CompiledPolicy
    from geopin.settings import Settings


@dataclass(frozen=True, slots=True)
class RuntimeState:
    policy: CompiledPolicy
    resolver: Resolver
    trust: TrustConfig
    keys: KeyStore | None
    routes: Mapping[str, Route]  # endpoint id -> route, for every endpoint of the policy
    loaded_at: float  # time.time() of the load
    problems: tuple[str, ...] = ()  # why some endpoints cannot be used (missing credentials)


@dataclass
class LoadFailure:
    """The last reload that failed: the running state kept serving."""

    at: float
    what: str  # "policy" | "geoip" | "keys" | "settings"
    message: str
    problems: list[dict[str, Any]] = field(default_factory=list)


class StateHolder:
    """Where the current RuntimeState lives. Assignment is the swap: atomic in the event loop."""

    __slots__ = ("current", "failure")

    def __init__(self, state: RuntimeState) -> None:
        self.current = state
        self.failure: LoadFailure | None = None


def load_state(settings: Settings) -> RuntimeState:
    """Load policy, GeoIP database and keys per ``settings``.

    Raises PolicyError, GeoIPError or ConfigError: nothing half-loaded is ever returned.
    """
    policy = load_policy(settings.policy_dir)
    for name, overrides in (
        ("endpoint_overrides", settings.endpoint_overrides),
        ("credential_files", settings.credential_files),
    ):
        unknown = sorted(set(overrides) - set(policy.endpoints))
        if unknown:
            raise ConfigError(
                f"{name}: no endpoint "
                + ", ".join(repr(u) for u in unknown)
                + f" in the policy at {settings.policy_dir}"
            )
    routes = {
        endpoint_id: prepare_route(
            endpoint,
            settings.endpoint_overrides.get(endpoint_id),
            _credential_file(settings, endpoint_id),
        )
        for endpoint_id, endpoint in policy.endpoints.items()
    }
    problems = tuple(f"endpoint {r.endpoint.id}: {r.problem}" for r in routes.values() if r.problem)
    trust = TrustConfig.from_strings(
        settings.trusted_proxies, settings.trusted_cdns, settings.forwarding_header
    )
    keys = KeyStore.load(settings.keys_file) if settings.keys_file is not None else None
    resolver = open_resolver(str(settings.geoip_db) if settings.geoip_db else None)
    return RuntimeState(policy, resolver, trust, keys, routes, time.time(), problems)


def _credential_file(settings: Settings, endpoint_id: str) -> CredentialRef | None:
    path = settings.credential_files.get(endpoint_id)
    return CredentialRef(file=str(path)) if path is not None else None


def describe_failure(exc: GeopinError, what: str) -> LoadFailure:
    problems: list[dict[str, Any]] = []
    if isinstance(exc, PolicyError):
        problems = [p.to_dict() for p in exc.problems]
        message = "\n".join(str(p) for p in exc.problems)
    else:
        message = str(exc)
    return LoadFailure(time.time(), what, message, problems)


def failure_kind(exc: GeopinError) -> str:
    if isinstance(exc, PolicyError):
        return "policy"
    if isinstance(exc, GeoIPError):
        return "geoip"
    return "settings"


def watched_files(settings: Settings) -> tuple[tuple[str, int, int], ...]:
    """A fingerprint of every file a reload reads: (path, mtime_ns, size) each."""
    paths = [settings.policy_dir]  # its own mtime changes when a file is added or removed
    try:
        paths.extend(policy_files(settings.policy_dir))
    except OSError:
        pass  # a missing directory: the reload reports it
    paths.extend(p for p in (settings.geoip_db, settings.keys_file) if p is not None)
    fingerprint = []
    for path in paths:
        try:
            stat = path.stat()
            fingerprint.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            fingerprint.append((str(path), -1, -1))
    return tuple(fingerprint)


class AuditSink(Protocol):
    """Where the proxy path's records go (``AuditWriter``; a test may stand in for it)."""

    async def commit(self, record_id: str, body: bytes) -> None:
        """Durably, before returning; AuditError when it cannot be kept."""
        ...

    def submit(self, record_id: str, body: bytes) -> None:
        """Durably if it can be, without waiting; failures are logged by the sink."""
        ...


@dataclass
class Runtime:
    """Everything the proxy path and the admin API share for the life of the process."""

    settings: Settings
    holder: StateHolder
    health: HealthBoard
    client: UpstreamClient
    audit: AuditSink
    decisions: DecisionEncoder  # decision records, with the client-address HMAC key
    admin_token: str | None
    telemetry: Telemetry = field(default_factory=Telemetry.from_settings)
    # The health snapshot the last request was routed with, for the breaker gauge: the metrics
    # exporter's thread reads this immutable value and never calls the board itself.
    last_health: HealthSnapshot | None = None
    orders: OrderMemo = field(default_factory=OrderMemo)  # routing's order, per snapshot
    in_flight: int = 0  # proxied requests (streams included) not yet answered to the end
    head_watch: HeadWatch = field(default_factory=HeadWatch)  # attempts awaiting an answer
    objects: ObjectHomes = field(default_factory=ObjectHomes)  # where made objects live
    later: Later = field(default_factory=Later)  # outcome records, access lines: after
    draining: bool = False  # set on SIGTERM: new requests get 503, readiness goes false
    # When a decision record last failed to commit, None once one commits again: readiness is
    # false for a while after, so a balancer sends the work to a router whose trail is writing.
    audit_failed_at: float | None = None

    def audit_writing(self, now: float, window_s: float) -> bool:
        """No decision record has failed to commit in the last ``window_s`` seconds."""
        failed = self.audit_failed_at
        return failed is None or now - failed >= window_s
