"""Spans for the raw ASGI proxy path, without any framework instrumentation.

One SERVER span per request continues the client's W3C ``traceparent`` (read straight from the
ASGI header list), with INTERNAL children for the policy decision and the audit commit and a
CLIENT child per upstream attempt, whose context goes upstream in a fresh ``traceparent``.

Parents are passed explicitly rather than attached to the ambient context: the proxy is async
and its spans cross awaits, and an explicit parent costs nothing to get wrong.

With tracing off, :meth:`Tracing.start_request` returns one shared do-nothing
:class:`RequestTrace` whose methods return at once, so the helpers cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = Sequence[tuple[bytes, bytes]]

TRACE_HEADERS = (b"traceparent", b"tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_PROVIDER_NAMES = {  # geopin's provider kinds -> gen_ai.provider.name
    "openai-compatible": "openai",
    "azure-openai": "azure.ai.openai",
    "anthropic": "anthropic",
}


def provider_name(kind: str) -> str:
    """``gen_ai.provider.name`` for one of the policy's provider kinds."""
    return _PROVIDER_NAMES.get(kind, kind)


class _AsgiGetter(Getter[Headers]):
    """Reads W3C trace context from ASGI headers (lower-case byte names)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.encode("ascii")
        values = [value.decode("latin-1") for n, value in carrier if n == name]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_GETTER = _AsgiGetter()


def replace_trace_headers(
    headers: list[tuple[bytes, bytes]], trace_headers: Sequence[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` less the client's trace context, plus ``trace_headers`` (when any).

    With tracing off ``trace_headers`` is empty and the client's own ``traceparent`` passes
    through untouched, as any other header would.
    """
    if not trace_headers:
        return headers
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    kept.extend(trace_headers)
    return kept


# -- the do-nothing handles (tracing off), also the base of the real ones ----------------------


class SpanHandle:
    """A child span: end it once. The base class does nothing."""

    __slots__ = ()

    def end(self, *, error: str | None = None) -> None:
        return None


class AttemptSpan(SpanHandle):
    """One upstream attempt (a CLIENT span)."""

    __slots__ = ()

    def trace_headers(self) -> list[tuple[bytes, bytes]]:
        """Header pairs carrying this attempt's context upstream (empty with tracing off)."""
        return []

    def end(  # type: ignore[override]
        self, *, status: int | None = None, error: str | None = None
    ) -> None:
        return None


class RequestTrace:
    """The SERVER span of one request. The base class does nothing (tracing off)."""

    __slots__ = ()

    @property
    def trace_id(self) -> str | None:
        """32 hex digits, for the audit record and the access log; None with tracing off."""
        return None

    def start_decision(self) -> SpanHandle:
        return _NO_SPAN

    def start_audit(self) -> SpanHandle:
        return _NO_SPAN

    def start_attempt(
        self,
        *,
        endpoint: str,
        server_address: str,
        server_port: int,
        method: str = "POST",
        attempt: int = 1,
        provider: str | None = None,
    ) -> AttemptSpan:
        return _NO_ATTEMPT

    def decided(
        self,
        *,
        decision_id: str,
        action: str,
        country: str | None,
        subdivision: str | None,
        location_source: str | None,
        policy_version: str,
        rules: Sequence[str],
    ) -> None:
        return None

    def routed(
        self,
        *,
        endpoint: str,
        processing_country: str,
        failovers: int = 0,
        provider: str | None = None,
    ) -> None:
        return None

    def usage(
        self, *, model: str, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> None:
        return None

    def end(self, *, status: int, error: str | None = None, end_ns: int | None = None) -> None:
        """End the span, at ``end_ns`` (``time.time_ns()``) when given, else now."""
        return None


_NO_SPAN = SpanHandle()
_NO_ATTEMPT = AttemptSpan()
NO_TRACE = RequestTrace()


# -- the recording handles ---------------------------------------------------------------------


def _end_span(
    span: trace.Span,
    error: str | None,
    status: int | None = None,
    failing_status: int = 400,
    end_ns: int | None = None,
) -> None:
    """End ``span`` with its response status, if any; an ``error``, or a status from
    ``failing_status`` up, marks it failed with that ``error.type``."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= failing_status and error is None:
            error = str(status)
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=end_ns)


class _ChildSpan(SpanHandle):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def end(self, *, error: str | None = None) -> None:
        _end_span(self._span, error)


class _Attempt(AttemptSpan):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def trace_headers(self) -> list[tuple[bytes, bytes]]:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()
        ]

    def end(  # type: ignore[override]
        self, *, status: int | None = None, error: str | None = None
    ) -> None:
        _end_span(self._span, error, status)


class _Request(RequestTrace):
    __slots__ = ("_tracer", "_span", "_context")

    def __init__(self, tracer: Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)

    @property
    def trace_id(self) -> str | None:
        context = self._span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def start_decision(self) -> SpanHandle:
        return _ChildSpan(self._tracer.start_span("geopin.decide", context=self._context))

    def start_audit(self) -> SpanHandle:
        return _ChildSpan(self._tracer.start_span("geopin.audit.commit", context=self._context))

    def start_attempt(
        self,
        *,
        endpoint: str,
        server_address: str,
        server_port: int,
        method: str = "POST",
        attempt: int = 1,
        provider: str | None = None,
    ) -> AttemptSpan:
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": server_address,
            "server.port": server_port,
            "geopin.endpoint": endpoint,
            "geopin.attempt": attempt,
        }
        if provider is not None:
            attributes["gen_ai.provider.name"] = provider
        span = self._tracer.start_span(
            method, context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        return _Attempt(span)

    def decided(
        self,
        *,
        decision_id: str,
        action: str,
        country: str | None,
        subdivision: str | None,
        location_source: str | None,
        policy_version: str,
        rules: Sequence[str],
    ) -> None:
        attributes: dict[str, Any] = {
            "geopin.decision.id": decision_id,
            "geopin.decision.action": action,
            "geopin.policy.version": policy_version,
            "geopin.rules": list(rules),
        }
        for key, value in (
            ("geopin.client.country", country),
            ("geopin.client.subdivision", subdivision),
            ("geopin.location.source", location_source),
        ):
            if value is not None:
                attributes[key] = value
        self._span.set_attributes(attributes)

    def routed(
        self,
        *,
        endpoint: str,
        processing_country: str,
        failovers: int = 0,
        provider: str | None = None,
    ) -> None:
        attributes: dict[str, Any] = {
            "geopin.endpoint": endpoint,
            "geopin.processing.country": processing_country,
            "geopin.failover.count": failovers,
        }
        if provider is not None:
            attributes["gen_ai.provider.name"] = provider
        self._span.set_attributes(attributes)

    def usage(
        self, *, model: str, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> None:
        attributes: dict[str, Any] = {"gen_ai.request.model": model}
        if input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = input_tokens
        if output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        self._span.set_attributes(attributes)

    def end(self, *, status: int, error: str | None = None, end_ns: int | None = None) -> None:
        # A 4xx is the client's error.
        _end_span(self._span, error, status, failing_status=500, end_ns=end_ns)


class Tracing:
    """Starts request spans on ``tracer``; with ``tracer=None`` every request gets NO_TRACE."""

    __slots__ = ("_tracer", "_trust_client")

    def __init__(self, tracer: Tracer | None, *, trust_client_traceparent: bool = True) -> None:
        self._tracer = tracer
        self._trust_client = trust_client_traceparent

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_request(
        self,
        *,
        method: str,
        path: str,
        headers: Headers,
        route: str | None = None,
        server_address: str | None = None,
        scheme: str = "http",
    ) -> RequestTrace:
        """The SERVER span of a request, continuing the client's ``traceparent`` if trusted.

        ``path`` is the URL path only (never the query string, which can hold credentials);
        ``route`` is the low-cardinality route template, e.g. ``/v1/chat/completions``.
        """
        tracer = self._tracer
        if tracer is None:
            return NO_TRACE
        parent = _PROPAGATOR.extract(headers, getter=_GETTER) if self._trust_client else Context()
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scheme,
        }
        if route is not None:
            attributes["http.route"] = route
        if server_address is not None:
            attributes["server.address"] = server_address
        span = tracer.start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        return _Request(tracer, span)
