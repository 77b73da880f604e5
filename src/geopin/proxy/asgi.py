"""The proxy path: a raw ASGI callable for ``/v1/*`` and Azure ``/openai/deployments/*``.

Per request, in this order: authenticate the router key (the tenant), read and parse the body
once, locate the client, decide, keep the decision record durably (``AuditWriter.commit``;
503 if it cannot be kept: nothing is forwarded unrecorded), then try the candidates in
routing's order until one answers below 500 (never one outside the decision's candidates),
and stream its answer through. The outcome record follows the response without delaying it.
A call that names no model (files, batches, a stored response) is decided under every model's
rules and goes to its tenant's home endpoint only; ``X-Geopin-Endpoint`` narrows any call to
the endpoint it names.

Telemetry rides along in an :class:`Exchange` per request: a SERVER span (a shared do-nothing
one with tracing off), child spans for the decision, the audit commit and each upstream
attempt, and, once the answer has gone, one set of request metrics and one access-log line,
refusals included (the line, and the span's end, in the router's next idle moment:
``geopin.proxy.later``). A client's ``traceparent`` is continued only when
``telemetry.trust_client_traceparent`` says so, and each attempt sends its own upstream.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

from geopin.audit.records import new_record_id
from geopin.errors import AuditError, GeoIPError
from geopin.geo.client import client_address
from geopin.geo.location import UNKNOWN, Location
from geopin.geo.locator import locate
from geopin.policy.decision import Decision, Endpoint, RequestContext
from geopin.policy.engine import decide
from geopin.proxy import refusal
from geopin.proxy.attempts import forward
from geopin.proxy.exchange import Exchange
from geopin.proxy.models import send_models
from geopin.proxy.objects import named_objects
from geopin.proxy.outcome import record_outcome
from geopin.proxy.refusal import ErrorResponse
from geopin.proxy.request import (
    AZURE_PREFIX,
    ClientGone,
    Pin,
    affinity_key,
    call_api,
    client_tenant,
    client_trace_id,
    content_type,
    declared_data_class,
    object_pin,
    parse_call,
    pinned_endpoint,
    read_body,
    route_template,
)
from geopin.proxy.state import Runtime, RuntimeState
from geopin.proxy.target import BadTarget, request_target, shown_path
from geopin.proxy.upstream import API_OF_KIND, ClientCall
from geopin.routing.select import home
from geopin.telemetry.accesslog import access_log, access_log_enabled, client_prefix
from geopin.telemetry.tracing import NO_TRACE

log = logging.getLogger(__name__)

_CLIENT_CLOSED = 499  # the status logged for a client that went away before its answer
_METHODS = ("GET", "POST", "DELETE")  # what the model APIs use, on objects and models
# How old the latency averages a request is routed by may be (breaker changes count at once).
_LATENCY_LAG_S = 0.05


class ProxyApp:
    """The ASGI callable of the proxy path. ``runtime`` is shared with the admin API."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self._limit = settings.limits.max_body_bytes
        self._anonymous = settings.auth.allow_anonymous
        self._max_attempts = settings.upstream.max_attempts
        self._retry_after = settings.upstream.retry_after_s
        self._rules_base = settings.public_url or ""
        self._tracing = runtime.telemetry.tracing
        self._traced = self._tracing.enabled  # its tracer is set once, at start
        self._metrics = runtime.telemetry.metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        runtime = self.runtime
        target: str | None
        query: str | None
        try:
            target, query = request_target(scope)
            refused = None
        except BadTarget as exc:
            target = query = None
            refused = exc
        path = target if target is not None else shown_path(scope)
        method: str = scope["method"]
        route = route_template(target) if target is not None else None
        trace = (
            self._tracing.start_request(
                method=method, path=path, headers=scope["headers"], route=route
            )
            if self._traced
            else NO_TRACE
        )
        exchange = Exchange(trace)
        runtime.in_flight += 1
        try:
            if runtime.draining:
                error: ErrorResponse | None = refusal.shutting_down(self._retry_after)
            elif target is None or query is None:
                error = refusal.invalid_target(str(refused))
            else:
                state = runtime.holder.current  # this request's snapshot, to its end
                error = await self._serve(
                    state, target, query, scope, receive, send, exchange, started
                )
            if error is not None:
                exchange.status = error.status
                await refusal.send_error(send, error.naming(self._request_id(exchange)))
        except ClientGone:
            exchange.status = _CLIENT_CLOSED
        except Exception:
            log.exception("request %s %s failed", method, path)
            exchange.status = 500
            try:  # unless its answer had begun: then the server drops the connection
                error = refusal.internal_error(self._request_id(exchange))
                await refusal.send_error(send, error)
            except Exception:
                pass
        finally:
            runtime.in_flight -= 1
            self._finish(exchange, method, path, route, started)

    @staticmethod
    def _request_id(exchange: Exchange) -> str:
        """The decision's id; for a request refused before any decision, a new id that names
        it in the access log (and nowhere in the trail: nothing was decided)."""
        if exchange.decision_id is None:
            exchange.decision_id = new_record_id()
        return exchange.decision_id

    def _finish(
        self, exchange: Exchange, method: str, path: str, route: str | None, started: float
    ) -> None:
        """The request's metrics are written; its span's end (at this time) and its access-log
        line are queued for the router's next idle moment (``runtime.later``)."""
        duration = time.perf_counter() - started
        status = exchange.status
        later = self.runtime.later
        if exchange.trace is not NO_TRACE:  # ended after what the answer says is read (usage)
            later.add(
                exchange.trace.end,
                status=status,
                error="client_disconnected" if status == _CLIENT_CLOSED else None,
                end_ns=time.time_ns(),
            )
        location = exchange.location
        country = location.country if location is not None else None
        self._metrics.request(
            action=exchange.action,
            country=country,
            processing_country=exchange.processing_country,
            status=status,
            duration_s=duration,
            method=method,
            route=route,
        )
        if not access_log_enabled():
            return
        later.add(  # written in the router's next idle moment
            access_log,
            method=method,
            path=path,
            status=status,
            duration_s=duration,
            decision_id=exchange.decision_id,
            trace_id=exchange.trace_id,
            action=exchange.action,
            client_country=country,
            client_network=client_prefix(exchange.client_ip),
            endpoint=exchange.endpoint,
            processing_country=exchange.processing_country,
            bytes_in=exchange.bytes_in,
            bytes_out=exchange.bytes_out,
            tenant=exchange.tenant,
            failovers=exchange.failovers,
        )

    async def _serve(
        self,
        state: RuntimeState,
        path: str,
        query: str,
        scope: dict,
        receive: Any,
        send: Any,
        exchange: Exchange,
        started: float,
    ) -> ErrorResponse | None:
        method: str = scope["method"]
        headers = scope["headers"]
        deployment = None
        if path.startswith("/v1/"):
            operation = path[3:]
        elif path.startswith(AZURE_PREFIX):
            escaped, _, rest = path[len(AZURE_PREFIX) :].partition("/")
            if not escaped or not rest:
                return refusal.not_found(f"no route for {path}")
            deployment = unquote(escaped)  # a model name, as the policy spells it
            operation = "/" + rest
        else:
            return refusal.not_found(f"no route for {path}; model APIs are under /v1")

        tenant, error = self._tenant(state, headers)
        if error is not None:
            return error
        exchange.tenant = tenant
        data_class, error = declared_data_class(state, headers)
        if error is not None:
            return error
        pin, error = pinned_endpoint(state, headers)
        if error is not None:
            return error

        if deployment is None and (operation == "/models" or operation.startswith("/models/")):
            if method != "GET":
                return refusal.method_not_allowed(method, "GET")
            exchange.status = 200
            exchange.action = "models"
            _, location = self._locate(state, scope, headers)
            request_id = self._request_id(exchange)
            return await send_models(
                state, location, operation, tenant, data_class, send, request_id
            )
        if deployment is not None and method != "POST":
            return refusal.method_not_allowed(method, "POST")
        if method not in _METHODS:
            return refusal.method_not_allowed(method, ", ".join(_METHODS))

        raw = await read_body(receive, headers, self._limit)
        if isinstance(raw, ErrorResponse):
            return raw
        exchange.bytes_in = len(raw)
        kind = content_type(headers)
        api = call_api(operation, headers)
        call, error = parse_call(method, operation, deployment, query, raw, kind, api)
        if error is not None:
            return error
        assert call is not None
        if names := named_objects(call.operation, call.body):
            exchange.object_id = names[0]
            if pin is None:
                pin = await object_pin(state, self.runtime.objects, tenant, names)
                if pin is not None:
                    exchange.object_id = pin.object_id

        client, location = self._locate(state, scope, headers)
        exchange.location = location
        exchange.client_ip = client.ip
        trace = exchange.trace
        ctx = RequestContext(location, call.model, tenant, data_class)
        span = trace.start_decision()
        deciding = time.perf_counter()
        decision = decide(state.policy, ctx)
        decided = time.perf_counter()
        span.end()
        decision_id = new_record_id()
        exchange.decision_id = decision_id
        action = exchange.action = decision.action.value
        self._metrics.decision(action=action, duration_s=decided - deciding)
        if trace is not NO_TRACE:  # its attributes are only built for a recorded span
            trace.decided(
                decision_id=decision_id,
                action=action,
                country=location.country,
                subdivision=location.subdivision,
                location_source=location.source.value,
                policy_version=decision.policy_version,
                rules=decision.rule_ids,
            )
        trace_id = exchange.trace_id = trace.trace_id or client_trace_id(headers)
        runtime = self.runtime
        attempts: tuple[Endpoint, ...] = ()
        routed = decision.routed
        if routed:
            attempts = self._attempts(decision, call, tenant, client.ip, pin)
        span = trace.start_audit()
        try:
            record_id, body = runtime.decisions.encode(
                decision,
                location=location,
                client=client.ip,
                model=call.model,
                decision_id=decision_id,
                endpoint=attempts[0] if attempts else None,
                tenant=tenant,
                data_class=data_class,
                trace_id=trace_id,
            )
            await runtime.audit.commit(record_id, body)
        except AuditError as exc:
            span.end(error="audit_unavailable")
            runtime.audit_failed_at = time.monotonic()
            log.error("decision %s not recorded, request refused: %s", decision_id, exc)
            return refusal.audit_unavailable(decision_id, self._retry_after)
        span.end()
        if runtime.audit_failed_at is not None:
            runtime.audit_failed_at = None
        if not routed:
            return refusal.denied(decision, decision_id, self._rules_base)
        if pin is not None and not attempts:
            return self._pin_refused(state, call, decision, decision_id, pin, exchange, started)
        return await forward(
            runtime, state, call, scope, decision, attempts, decision_id, started, receive,
            send, exchange, metrics=self._metrics, max_attempts=self._max_attempts,
            retry_after=self._retry_after,
        )  # fmt: skip

    # -- steps ---------------------------------------------------------------------------------

    def _attempts(
        self,
        decision: Decision,
        call: ClientCall,
        tenant: str | None,
        ip: Any,
        pin: Pin | None,
    ) -> tuple[Endpoint, ...]:
        """The endpoints to try, in order: always the decision's candidates that speak the
        client's API (the record names the first, the one meant to process the request).

        A model call gets routing's failover order; a call that names no model goes to its
        tenant's home endpoint only (its objects live there); a pin (``X-Geopin-Endpoint``, or
        the endpoint an object the call names was made at) narrows either to that endpoint, and
        to none when it is not a candidate.
        """
        api = call.api
        if pin is not None:
            return tuple(
                e
                for e in decision.candidates
                if e.id == pin.endpoint and API_OF_KIND[e.kind] == api
            )
        if call.model is None:
            ranked = zip(decision.candidates, decision.candidate_ranks, strict=True)
            speaking = ((e, rank) for e, rank in ranked if API_OF_KIND[e.kind] == api)
            chosen = home(speaking, (tenant or "").encode())
            return () if chosen is None else (chosen,)
        runtime = self.runtime
        health = runtime.health.snapshot(time.monotonic(), max_age_s=_LATENCY_LAG_S)
        runtime.last_health = health
        ordered = runtime.orders.order(decision, health, affinity_key(tenant, ip))
        return tuple(e for e in ordered if API_OF_KIND[e.kind] == api)

    def _pin_refused(
        self,
        state: RuntimeState,
        call: ClientCall,
        decision: Decision,
        decision_id: str,
        pin: Pin,
        exchange: Exchange,
        started: float,
    ) -> ErrorResponse:
        """The endpoint the call is pinned to cannot take the request; the outcome says so."""
        error = refusal.endpoint_refused(
            decision, decision_id, state.policy.endpoints[pin.endpoint], call.model, call.api,
            by=pin.by,
        )  # fmt: skip
        record_outcome(
            self.runtime, exchange, call, decision, decision_id, started,
            endpoint=None, attempts=[], status=error.status, bytes_out=None, usage=None,
            error=f"the endpoint pinned ({pin.by}), {pin.endpoint}, is not a candidate",
        )  # fmt: skip
        return error

    def _tenant(self, state: RuntimeState, headers: list) -> tuple[str | None, Any]:
        tenant, why = client_tenant(state, headers, allow_anonymous=self._anonymous)
        return tenant, None if why is None else refusal.unauthorized(why)

    def _locate(self, state: RuntimeState, scope: dict, headers: list) -> tuple[Any, Location]:
        peer = scope.get("client")
        host = peer[0] if peer else None
        try:
            return locate(host, headers, state.trust, state.resolver)
        except GeoIPError as exc:
            log.warning("GeoIP lookup failed, location unknown: %s", exc)
            return client_address(host, headers, state.trust), UNKNOWN
