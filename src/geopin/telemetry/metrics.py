"""geopin's instruments, behind one small class with one typed method per thing that happens.

Call sites stay one line and cannot invent attributes: every attribute value comes from a
bounded set (an action, an ISO country code, an endpoint id of the policy, a status code, a
result). Client addresses, decision ids, tenants and free text never become metric attributes;
they belong in spans and the access log.

Names follow the OpenTelemetry semantic conventions where one exists
(``http.server.request.duration``, ``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage``); geopin's own live under ``geopin.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from geopin import __version__
from geopin.telemetry.aggregate import Aggregates

log = logging.getLogger(__name__)

# Advised boundaries of the semantic conventions, in seconds and tokens.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
GEN_AI_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# The decision is in-process and pure: microseconds to a millisecond or two.
DECISION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
UPSTREAM_ERRORS = frozenset(("connect", "timeout", "protocol", "status", "breaker_open", "other"))
RELOAD_KINDS = frozenset(("policy", "geoip", "keys", "settings"))
UNKNOWN = "unknown"
SCOPE = "geopin"

# The names, in one place for the docs and the tests.
INSTRUMENTS = (
    "http.server.request.duration",
    "geopin.requests",
    "geopin.decision.duration",
    "geopin.upstream.duration",
    "geopin.upstream.errors",
    "geopin.failovers",
    "geopin.stream.time_to_first_byte",
    "gen_ai.client.operation.duration",
    "gen_ai.client.token.usage",
    "geopin.endpoint.breaker_state",
    "geopin.audit.queue_depth",
    "geopin.audit.commit.duration",
    "geopin.audit.sequencing_lag",
    "geopin.audit.checkpoints",
    "geopin.policy.reloads",
)

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT"))


def country_code(value: str | None) -> str:
    """An ISO 3166-1 alpha-2 code as given, anything else ``unknown`` (bounded cardinality)."""
    if value is not None and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return UNKNOWN


def _method(value: str) -> str:
    return value if value in _METHODS else "_OTHER"  # as the HTTP conventions ask


class Metrics:
    """geopin's instruments. With ``meter=None`` every method returns at once.

    Synchronous measurements are added up in :attr:`aggregates` (see
    :mod:`geopin.telemetry.aggregate`: the SDK's own instruments cost more per request than
    the router may spend); the gauges are the SDK's observable instruments on ``meter``.
    """

    def __init__(self, meter: Meter | None) -> None:
        self.enabled = meter is not None
        self._breakers: Callable[[], Mapping[str, Any]] | None = None
        self._queue_depth: Callable[[], int | None] | None = None
        self._sequencing_lag: Callable[[], float | None] | None = None
        self._objects_known: Callable[[], int] | None = None
        self._object_table: Callable[[], Mapping[str, Any]] | None = None
        self.aggregates: Aggregates | None = None
        if meter is None:
            return
        agg = self.aggregates = Aggregates(InstrumentationScope(SCOPE, __version__))
        self._add = agg.add
        self._record = agg.record
        self._http_duration = agg.histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            bounds=HTTP_DURATION_BUCKETS,
            attributes=("http.request.method", "http.response.status_code", "http.route"),
        )
        self._requests = agg.counter(
            "geopin.requests",
            unit="{request}",
            description="Requests by decision action, client country and processing country.",
            attributes=(
                "geopin.action",
                "geopin.client.country",
                "geopin.processing.country",
                "http.response.status_code",
            ),
        )
        self._decision = agg.histogram(
            "geopin.decision.duration",
            unit="s",
            description="Time the policy engine took to decide.",
            bounds=DECISION_BUCKETS,
            attributes=("geopin.action",),
        )
        self._upstream = agg.histogram(
            "geopin.upstream.duration",
            unit="s",
            description="Time from sending to an endpoint to its response head, per attempt.",
            bounds=HTTP_DURATION_BUCKETS,
            attributes=("geopin.endpoint", "http.response.status_code"),
        )
        self._upstream_errors = agg.counter(
            "geopin.upstream.errors",
            unit="{error}",
            description="Failed upstream attempts by endpoint and kind of failure.",
            attributes=("geopin.endpoint", "error.type"),
        )
        self._failovers = agg.counter(
            "geopin.failovers",
            unit="{failover}",
            description="Requests moved on from an endpoint to the next candidate.",
            attributes=("geopin.endpoint",),
        )
        self._ttfb = agg.histogram(
            "geopin.stream.time_to_first_byte",
            unit="s",
            description="Time from the request to the first body byte of a streamed answer.",
            bounds=GEN_AI_DURATION_BUCKETS,
            attributes=("geopin.endpoint",),
        )
        gen_ai = (
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "geopin.endpoint",
            "error.type",
        )
        self._gen_ai_duration = agg.histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of model operations forwarded to an endpoint.",
            bounds=GEN_AI_DURATION_BUCKETS,
            attributes=gen_ai,
        )
        self._tokens = agg.histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per operation, as reported by the endpoint.",
            bounds=TOKEN_BUCKETS,
            attributes=(*gen_ai[:4], "gen_ai.token.type"),
        )
        self._commit = agg.histogram(
            "geopin.audit.commit.duration",
            unit="s",
            description="Time one audit transaction took to commit (a group of records).",
            bounds=COMMIT_BUCKETS,
        )
        self._checkpoints = agg.counter(
            "geopin.audit.checkpoints",
            unit="{checkpoint}",
            description="Checkpoint signing attempts by result.",
            attributes=("result",),
        )
        self._reloads = agg.counter(
            "geopin.policy.reloads",
            unit="{reload}",
            description="Reloads of policy, GeoIP data, keys or settings by result.",
            attributes=("result", "geopin.reload.kind"),
        )
        meter.create_observable_gauge(
            "geopin.endpoint.breaker_state",
            callbacks=[self._observe_breakers],
            unit="1",
            description="Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
        )
        meter.create_observable_gauge(
            "geopin.audit.queue_depth",
            callbacks=[self._observe_queue_depth],
            unit="{record}",
            description="Audit records waiting for a commit, including the one in flight.",
        )
        meter.create_observable_gauge(
            "geopin.audit.sequencing_lag",
            callbacks=[self._observe_sequencing_lag],
            unit="s",
            description="Age of the oldest committed record not yet in the Merkle log.",
        )
        meter.create_observable_gauge(
            "geopin.objects.known",
            callbacks=[self._observe_objects_known],
            unit="{object}",
            description="Upstream objects (files, stored responses) whose endpoint is known here.",
        )
        meter.create_observable_counter(
            "geopin.objects.lookups",
            callbacks=[self._observe_object_lookups],
            unit="{lookup}",
            description="Lookups in the shared object table for objects this process did not know.",
        )
        meter.create_observable_counter(
            "geopin.objects.writes",
            callbacks=[self._observe_object_writes],
            unit="{row}",
            description="Rows written to the shared object table, or dropped (not writable).",
        )

    # -- the request path ------------------------------------------------------------------

    def request(
        self,
        *,
        action: str,
        country: str | None,
        processing_country: str | None,
        status: int,
        duration_s: float,
        method: str = "POST",
        route: str | None = None,
    ) -> None:
        """A request answered: ``action`` is route, deny or error (refused before deciding)."""
        if not self.enabled:
            return
        self._add(
            self._requests,
            (action, country_code(country), country_code(processing_country), status),
        )
        self._record(self._http_duration, (_method(method), status, route), duration_s)

    def decision(self, *, action: str, duration_s: float) -> None:
        if self.enabled:
            self._record(self._decision, (action,), duration_s)

    def upstream(self, *, endpoint: str, status: int | None, duration_s: float) -> None:
        """One attempt's time to response head (``status`` None when none came)."""
        if self.enabled:
            self._record(self._upstream, (endpoint, status), duration_s)

    def upstream_error(self, *, endpoint: str, kind: str) -> None:
        """``kind``: connect, timeout, protocol, status (a 5xx), breaker_open or other."""
        if self.enabled:
            error = kind if kind in UPSTREAM_ERRORS else "other"
            self._add(self._upstream_errors, (endpoint, error))

    def failover(self, *, endpoint: str) -> None:
        """The request left ``endpoint`` for the next candidate."""
        if self.enabled:
            self._add(self._failovers, (endpoint,))

    def time_to_first_byte(self, *, endpoint: str, seconds: float) -> None:
        if self.enabled:
            self._record(self._ttfb, (endpoint,), seconds)

    def model_operation(
        self,
        *,
        operation: str,
        provider: str | None,
        model: str,
        endpoint: str,
        duration_s: float,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        error_type: str | None = None,
    ) -> None:
        """A forwarded model call; ``model`` is the model the client asked for (one of the
        policy's catalogue: unknown models are refused before they reach an endpoint)."""
        if not self.enabled:
            return
        if error_type is not None:
            error_type = error_type if error_type in UPSTREAM_ERRORS else "other"
        self._record(
            self._gen_ai_duration, (operation, provider, model, endpoint, error_type), duration_s
        )
        if error_type is not None:
            return
        for token_type, count in (("input", input_tokens), ("output", output_tokens)):
            if count is not None and count >= 0:
                self._record(
                    self._tokens, (operation, provider, model, endpoint, token_type), count
                )

    # -- background work -------------------------------------------------------------------

    def audit_commit(self, *, duration_s: float) -> None:
        """Safe from any thread (the audit writer commits in its own)."""
        if self.enabled:
            self._record(self._commit, (), duration_s)

    def checkpoint(self, *, ok: bool) -> None:
        if self.enabled:
            self._add(self._checkpoints, ("success" if ok else "failure",))

    def policy_reload(self, *, ok: bool, what: str = "policy") -> None:
        if self.enabled:
            kind = what if what in RELOAD_KINDS else "settings"
            self._add(self._reloads, ("success" if ok else "failure", kind))

    # -- observed on collection ------------------------------------------------------------

    def watch_breakers(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Report breaker states from ``source()``: endpoint id -> an object with a ``state``
        (a HealthSnapshot) or the state itself. Called from the exporting thread, so it must
        only read an immutable value (keep the last snapshot; do not call the board)."""
        self._breakers = source

    def watch_audit(
        self,
        *,
        queue_depth: Callable[[], int | None] | None = None,
        sequencing_lag: Callable[[], float | None] | None = None,
    ) -> None:
        """Report the audit queue depth and sequencing lag (seconds) from these callables,
        called from the exporting thread; None from one means nothing to report."""
        if queue_depth is not None:
            self._queue_depth = queue_depth
        if sequencing_lag is not None:
            self._sequencing_lag = sequencing_lag

    def watch_objects(
        self,
        known: Callable[[], int],
        table: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Report how many objects' endpoints this process knows (``known()``) and what the
        shared object table did (``table()``: ``ObjectTable.stats``), read on collection."""
        self._objects_known = known
        self._object_table = table

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._breakers
        if source is None:
            return []
        try:
            entries = list(source().items())
        except Exception:  # a broken source must not break the other metrics
            log.debug("breaker state source failed", exc_info=True)
            return []
        out = []
        for endpoint, entry in entries:
            state = str(getattr(entry, "state", entry))
            if state in BREAKER_STATES:
                out.append(Observation(BREAKER_STATES[state], {"geopin.endpoint": endpoint}))
        return out

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return _observe(self._queue_depth, "audit queue depth")

    def _observe_sequencing_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return _observe(self._sequencing_lag, "sequencing lag")

    def _observe_objects_known(self, options: CallbackOptions) -> Iterable[Observation]:
        return _observe(self._objects_known, "objects known")

    def _observe_object_lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_table(("found", "not_found", "failed"))

    def _observe_object_writes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe_table(("written", "dropped"))

    def _observe_table(self, results: tuple[str, ...]) -> list[Observation]:
        source = self._object_table
        if source is None:
            return []
        try:
            stats = source()
            return [Observation(int(stats[r]), {"result": r}) for r in results]
        except Exception:
            log.debug("object table source failed", exc_info=True)
            return []


def _observe(source: Callable[[], float | int | None] | None, what: str) -> list[Observation]:
    if source is None:
        return []
    try:
        value = source()
    except Exception:
        log.debug("%s source failed", what, exc_info=True)
        return []
    return [] if value is None else [Observation(value)]
