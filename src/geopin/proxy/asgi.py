"""The proxy path: a raw ASGI callable for ``/v1/*`` and Azure ``/openai/deployments/*``.

Per request, in this order: authenticate the router key (the tenant), read and parse the body
once, locate the client, decide, commit the decision record (503 if that fails: nothing is
forwarded unrecorded), then try the candidates in routing's order until one answers below 500
(never one outside the decision's candidates), and stream its answer through. The outcome
record follows the response without delaying it.

Telemetry rides along in an :class:`_Exchange` per request: a SERVER span (a shared do-nothing
one with tracing off), child spans for the decision, the audit commit and each upstream
attempt, and, once the answer has gone, one set of request metrics and one access-log line,
refusals included. A client's ``traceparent`` is continued only when
``telemetry.trust_client_traceparent`` says so, and each attempt sends its own upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from geopin.audit.records import decision_record, new_record_id, outcome_record
from geopin.errors import AuditError, GeoIPError, UpstreamError
from geopin.geo.client import client_address
from geopin.geo.location import UNKNOWN, Location
from geopin.geo.locator import locate
from geopin.keys import presented_key
from geopin.policy.decision import Decision, Endpoint, RequestContext
from geopin.policy.engine import decide
from geopin.proxy import refusal
from geopin.proxy.forward import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from geopin.proxy.refusal import COUNTRY_HEADER, DECISION_HEADER, ENDPOINT_HEADER, ErrorResponse
from geopin.proxy.state import Runtime, RuntimeState
from geopin.proxy.upstream import (
    API_OF_KIND,
    Api,
    ClientCall,
    build_request,
    forwardable_headers,
)
from geopin.proxy.usage import UsageTap
from geopin.routing.select import order
from geopin.telemetry.accesslog import access_log, access_logger, client_prefix
from geopin.telemetry.metrics import Metrics
from geopin.telemetry.tracing import (
    NO_TRACE,
    RequestTrace,
    provider_name,
    replace_trace_headers,
)

log = logging.getLogger(__name__)

DATA_CLASS_HEADER = b"x-geopin-data-class"
_AZURE_PREFIX = "/openai/deployments/"
_RESPONSE_DROPPED = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)


_CLIENT_CLOSED = 499  # the status logged for a client that went away before its answer
# Operations whose path is its own route; any other is reported as a template, so a client
# cannot grow the number of metric series by inventing paths.
_OPERATIONS = frozenset(
    ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages", "/models")
)


class _ClientGone(Exception):
    """The client disconnected; there is nobody left to answer."""


class _Exchange:
    """One request's facts for its span, metrics and access-log line, filled in as it goes."""

    __slots__ = (
        "trace",
        "status",
        "action",
        "decision_id",
        "location",
        "client_ip",
        "tenant",
        "endpoint",
        "processing_country",
        "failovers",
        "bytes_in",
        "bytes_out",
        "trace_id",
    )

    def __init__(self, trace: RequestTrace) -> None:
        self.trace = trace
        self.status = 500  # until something is answered
        self.action = "error"  # refused before the policy decided
        self.decision_id: str | None = None
        self.location: Location | None = None
        self.client_ip: Any = None  # only its network prefix is ever logged
        self.tenant: str | None = None
        self.endpoint: str | None = None
        self.processing_country: str | None = None
        self.failovers: int | None = None
        self.bytes_in: int | None = None
        self.bytes_out: int | None = None
        self.trace_id: str | None = None


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
        self._metrics = runtime.telemetry.metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        runtime = self.runtime
        path: str = scope["path"]
        method: str = scope["method"]
        route = _route(path)
        trace = (
            self._tracing.start_request(
                method=method, path=path, headers=scope["headers"], route=route
            )
            if self._tracing.enabled
            else NO_TRACE
        )
        exchange = _Exchange(trace)
        runtime.in_flight += 1
        try:
            if runtime.draining:
                error: ErrorResponse | None = refusal.shutting_down(self._retry_after)
            else:
                state = runtime.holder.current  # this request's snapshot, to its end
                error = await self._serve(state, scope, receive, send, exchange, started)
            if error is not None:
                exchange.status = error.status
                await refusal.send_error(send, error)
        except _ClientGone:
            exchange.status = _CLIENT_CLOSED
        finally:
            runtime.in_flight -= 1
            self._finish(exchange, method, path, route, started)

    def _finish(
        self, exchange: _Exchange, method: str, path: str, route: str | None, started: float
    ) -> None:
        """The request's span ends, its metrics and its access-log line are written."""
        duration = time.perf_counter() - started
        status = exchange.status
        exchange.trace.end(
            status=status, error="client_disconnected" if status == _CLIENT_CLOSED else None
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
        if access_logger.disabled:
            return
        access_log(
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
        scope: dict,
        receive: Any,
        send: Any,
        exchange: _Exchange,
        started: float,
    ) -> ErrorResponse | None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = scope["headers"]
        query = scope.get("query_string", b"").decode("latin-1")
        deployment = None
        if path.startswith("/v1/"):
            operation = path[3:]
        elif path.startswith(_AZURE_PREFIX):
            deployment, _, rest = path[len(_AZURE_PREFIX) :].partition("/")
            if not deployment or not rest:
                return refusal.not_found(f"no route for {path}")
            operation = "/" + rest
        else:
            return refusal.not_found(f"no route for {path}; model APIs are under /v1")

        tenant, error = self._tenant(state, headers)
        if error is not None:
            return error
        exchange.tenant = tenant
        data_class, error = _data_class(state, headers)
        if error is not None:
            return error

        if deployment is None and (operation == "/models" or operation.startswith("/models/")):
            if method != "GET":
                return refusal.method_not_allowed(method, "GET")
            exchange.status = 200
            exchange.action = "models"
            return await self._models(state, scope, operation, tenant, data_class, send)
        if method != "POST":
            return refusal.method_not_allowed(method, "POST")

        raw = await _read_body(receive, headers, self._limit)
        if isinstance(raw, ErrorResponse):
            return raw
        exchange.bytes_in = len(raw)
        call, error = _parse_call(method, operation, deployment, query, raw)
        if error is not None:
            return error
        assert call is not None

        client, location = self._locate(state, scope, headers)
        exchange.location = location
        exchange.client_ip = client.ip
        trace = exchange.trace
        ctx = RequestContext(location, call.model, tenant, data_class)
        span = trace.start_decision()
        deciding = time.perf_counter()
        decision = decide(state.policy, ctx)
        self._metrics.decision(
            action=decision.action.value, duration_s=time.perf_counter() - deciding
        )
        span.end()
        decision_id = new_record_id()
        exchange.decision_id = decision_id
        exchange.action = decision.action.value
        trace.decided(
            decision_id=decision_id,
            action=decision.action.value,
            country=location.country,
            subdivision=location.subdivision,
            location_source=location.source.value,
            policy_version=decision.policy_version,
            rules=decision.rule_ids,
        )
        trace_id = exchange.trace_id = trace.trace_id or _trace_id(headers)
        runtime = self.runtime
        attempts: tuple[Endpoint, ...] = ()
        if decision.routed:
            health = runtime.last_health = runtime.health.snapshot(time.monotonic())
            attempts = order(decision, health, _affinity(tenant, client.ip))
        span = trace.start_audit()
        try:
            await runtime.audit.record(
                decision_record(
                    decision,
                    location=location,
                    client=client.ip,
                    client_key=runtime.client_key,
                    model=call.model,
                    decision_id=decision_id,
                    time=datetime.now(UTC),
                    endpoint=attempts[0] if attempts else None,
                    tenant=tenant,
                    data_class=data_class,
                    trace_id=trace_id,
                )
            )
        except AuditError as exc:
            span.end(error="audit_unavailable")
            log.error("decision %s not recorded, request refused: %s", decision_id, exc)
            return refusal.audit_unavailable(decision_id, self._retry_after)
        span.end()
        if not decision.routed:
            return refusal.denied(decision, decision_id, self._rules_base)
        return await self._forward(
            state, call, headers, decision, attempts, decision_id, started, receive, send,
            exchange=exchange, location=location, trace_id=trace_id,
        )  # fmt: skip

    # -- steps ---------------------------------------------------------------------------------

    def _tenant(self, state: RuntimeState, headers: list) -> tuple[str | None, Any]:
        key = presented_key(headers)
        if key is None:
            if self._anonymous:
                return None, None
            return None, refusal.unauthorized()
        entry = state.keys.authenticate(key) if state.keys is not None else None
        if entry is None:
            return None, refusal.unauthorized("the geopin API key is not valid")
        return entry.tenant, None

    def _locate(self, state: RuntimeState, scope: dict, headers: list) -> tuple[Any, Location]:
        peer = scope.get("client")
        host = peer[0] if peer else None
        try:
            return locate(host, headers, state.trust, state.resolver)
        except GeoIPError as exc:
            log.warning("GeoIP lookup failed, location unknown: %s", exc)
            return client_address(host, headers, state.trust), UNKNOWN

    async def _forward(
        self,
        state: RuntimeState,
        call: ClientCall,
        headers: list,
        decision: Decision,
        attempts: tuple[Endpoint, ...],
        decision_id: str,
        started: float,
        receive: Any,
        send: Any,
        *,
        exchange: _Exchange,
        location: Location,
        trace_id: str | None,
    ) -> ErrorResponse | None:
        runtime = self.runtime
        board = runtime.health
        metrics = self._metrics
        trace = exchange.trace
        tenant = exchange.tenant
        forwarded = forwardable_headers(headers)
        tried: list[str] = []
        timeouts = 0
        failure = "no compliant endpoint is available now"
        left: str | None = None  # the endpoint the last attempt failed on
        for endpoint in attempts:
            if len(tried) >= self._max_attempts:
                break
            route = state.routes.get(endpoint.id)
            if route is None or not route.usable or API_OF_KIND[endpoint.kind] != call.api:
                continue
            if not board.acquire(endpoint.id, time.monotonic()):
                metrics.upstream_error(endpoint=endpoint.id, kind="breaker_open")
                continue
            if left is not None:
                metrics.failover(endpoint=left)
            tried.append(endpoint.id)
            provider = provider_name(str(endpoint.kind))
            attempt = trace.start_attempt(
                endpoint=endpoint.id,
                server_address=route.origin.host,
                server_port=route.origin.port,
                method=call.method,
                attempt=len(tried),
                provider=provider,
            )
            sending = replace_trace_headers(forwarded, attempt.trace_headers())
            sent = time.perf_counter()
            try:
                response = await runtime.client.send(build_request(route, call, sending))
            except UpstreamError as exc:
                elapsed = time.perf_counter() - sent
                kind = _error_kind(exc)
                attempt.end(error=kind)
                metrics.upstream(endpoint=endpoint.id, status=None, duration_s=elapsed)
                metrics.upstream_error(endpoint=endpoint.id, kind=kind)
                board.observe_failure(endpoint.id, str(exc), time.monotonic())
                timeouts += isinstance(exc, UpstreamTimeout)
                failure = f"endpoint {endpoint.id}: {exc}"
                left = endpoint.id
                continue
            elapsed = time.perf_counter() - sent
            metrics.upstream(endpoint=endpoint.id, status=response.status, duration_s=elapsed)
            if response.status >= 500:
                response.close()
                attempt.end(status=response.status)
                metrics.upstream_error(endpoint=endpoint.id, kind="status")
                board.observe_failure(endpoint.id, f"HTTP {response.status}", time.monotonic())
                failure = f"endpoint {endpoint.id} answered HTTP {response.status}"
                left = endpoint.id
                continue
            attempt.end(status=response.status)
            board.observe_success(endpoint.id, elapsed, time.monotonic())
            exchange.status = response.status
            exchange.endpoint = endpoint.id
            exchange.processing_country = endpoint.country
            exchange.failovers = len(tried) - 1
            trace.routed(
                endpoint=endpoint.id,
                processing_country=endpoint.country,
                failovers=len(tried) - 1,
                provider=provider,
            )
            tap, error = await _relay(
                response, endpoint, decision_id, receive, send, metrics, started
            )
            exchange.bytes_out = tap.bytes_out
            _observe_usage(
                exchange,
                tap,
                metrics,
                operation=_operation_name(call.operation),
                provider=provider,
                model=call.model,
                endpoint=endpoint.id,
                duration_s=time.perf_counter() - sent,
                error=error,
            )
            runtime.spawn(
                _record_outcome(
                    runtime,
                    decision_id=decision_id,
                    endpoint=endpoint,
                    attempts=tried,
                    status=response.status,
                    latency_us=int((time.perf_counter() - started) * 1e6),
                    model=call.model,
                    tenant=tenant,
                    location=location,
                    policy_version=decision.policy_version,
                    bytes_in=len(call.raw_body),
                    tap=tap,
                    error=error,
                    trace_id=trace_id,
                ),
                name=f"geopin-outcome:{decision_id}",
            )
            return None
        if tried and timeouts == len(tried):
            error_response = refusal.gateway_timeout(
                decision_id, f"no compliant endpoint answered in time ({failure})"
            )
        else:
            error_response = refusal.unavailable(decision_id, failure, self._retry_after)
        exchange.failovers = max(len(tried) - 1, 0)
        runtime.spawn(
            _record_outcome(
                runtime,
                decision_id=decision_id,
                endpoint=None,
                attempts=tried,
                status=error_response.status,
                latency_us=int((time.perf_counter() - started) * 1e6),
                model=call.model,
                tenant=tenant,
                location=location,
                policy_version=decision.policy_version,
                bytes_in=len(call.raw_body),
                tap=None,
                error=failure,
                trace_id=trace_id,
            ),
            name=f"geopin-outcome:{decision_id}",
        )
        return error_response

    async def _models(
        self,
        state: RuntimeState,
        scope: dict,
        operation: str,
        tenant: str | None,
        data_class: str | None,
        send: Any,
    ) -> ErrorResponse | None:
        """The models this client may reach from where it is: each one decided."""
        _, location = self._locate(state, scope, scope["headers"])
        reachable = []
        for model in sorted(state.policy.models):
            decision = decide(state.policy, RequestContext(location, model, tenant, data_class))
            if decision.routed and any(
                (r := state.routes.get(e.id)) is not None and r.usable for e in decision.candidates
            ):
                reachable.append(model)
        entries = [
            {"id": m, "object": "model", "created": 0, "owned_by": "geopin"} for m in reachable
        ]
        if operation == "/models":
            payload: dict[str, Any] = {"object": "list", "data": entries}
        else:
            wanted = operation[len("/models/") :]
            found = [e for e in entries if e["id"] == wanted]
            if not found:
                return refusal.not_found(f"model '{wanted}' is not available", "model_not_found")
            payload = found[0]
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return None


# -- helpers ------------------------------------------------------------------------------------


def _data_class(state: RuntimeState, headers: list) -> tuple[str | None, Any]:
    for name, value in headers:
        if name == DATA_CLASS_HEADER:
            declared = value.decode("latin-1").strip()
            if declared not in state.policy.data_classes:
                known = ", ".join(sorted(state.policy.data_classes)) or "none"
                return None, refusal.bad_request(
                    f"X-Geopin-Data-Class '{declared}' is not a data class of the policy "
                    f"(known: {known})",
                    "invalid_data_class",
                )
            return declared, None
    return None, None


async def _read_body(receive: Any, headers: list, limit: int) -> bytes | ErrorResponse:
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return refusal.bad_request("invalid Content-Length", "invalid_content_length")
            if int(value) > limit:
                return refusal.too_large(limit)  # refused before a byte of it is read
    parts = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return refusal.too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_call(
    method: str, operation: str, deployment: str | None, query: str, raw: bytes
) -> tuple[ClientCall | None, ErrorResponse | None]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return None, refusal.bad_request(
            f"the request body is not valid JSON: {exc}", "invalid_json"
        )
    if not isinstance(body, dict):
        return None, refusal.bad_request("the request body must be a JSON object", "invalid_json")
    api_version = None
    model: Any
    if deployment is not None:
        model = deployment
        params = [p for p in query.split("&") if p]
        versions = [p for p in params if p.startswith("api-version=")]
        api_version = versions[0].partition("=")[2] if versions else None
        query = "&".join(p for p in params if not p.startswith("api-version="))
    else:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None, refusal.bad_request(
                "the request body needs a 'model' string", "missing_model", param="model"
            )
    api = Api.ANTHROPIC if operation.startswith("/messages") else Api.OPENAI
    return ClientCall(api, method, operation, model, body, raw, query, api_version), None


def _route(path: str) -> str | None:
    """The low-cardinality route template of ``path`` (None: not a path geopin serves)."""
    if path.startswith("/v1/"):
        operation = path[3:]
        if operation in _OPERATIONS:
            return path
        if operation.startswith("/models/"):
            return "/v1/models/{model}"
        return "/v1/{operation}"
    if path.startswith(_AZURE_PREFIX):
        operation = "/" + path[len(_AZURE_PREFIX) :].partition("/")[2]
        shown = operation if operation in _OPERATIONS else "/{operation}"
        return "/openai/deployments/{deployment}" + shown
    return None


def _operation_name(operation: str) -> str:
    """``gen_ai.operation.name`` of a forwarded call, per the GenAI conventions."""
    if operation in ("/chat/completions", "/messages", "/responses"):
        return "chat"
    if operation == "/completions":
        return "text_completion"
    if operation == "/embeddings":
        return "embeddings"
    return "other"


def _error_kind(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    return "other"


def _observe_usage(
    exchange: _Exchange,
    tap: UsageTap,
    metrics: Metrics,
    *,
    operation: str,
    provider: str,
    model: str,
    endpoint: str,
    duration_s: float,
    error: str | None,
) -> None:
    """The GenAI attributes and metrics of a forwarded call, when anything will read them.

    Reading the usage parses the body's tail, so it is skipped when neither traces nor
    metrics are on (the outcome record parses it again, after the response, off this path).
    """
    if not metrics.enabled and exchange.trace is NO_TRACE:
        return
    usage = tap.usage() if error is None else None
    input_tokens = output_tokens = None
    if usage is not None:
        input_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
        output_tokens = usage.get("completion_tokens", usage.get("output_tokens"))
    exchange.trace.usage(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
    metrics.model_operation(
        operation=operation,
        provider=provider,
        model=model,
        endpoint=endpoint,
        duration_s=duration_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error_type=None if error is None else "other",
    )


def _trace_id(headers: list) -> str | None:
    for name, value in headers:
        if name == b"traceparent":
            parts = value.split(b"-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1].decode("latin-1")
    return None


def _affinity(tenant: str | None, ip: Any) -> bytes:
    """Tenant and client network (/24 or /48): one client keeps to one endpoint."""
    prefix = b"" if ip is None else ip.packed[: 3 if ip.version == 4 else 6]
    return (tenant or "").encode() + b"|" + prefix


async def _relay(
    response: UpstreamResponse,
    endpoint: Endpoint,
    decision_id: str,
    receive: Any,
    send: Any,
    metrics: Metrics,
    started: float,
) -> tuple[UsageTap, str | None]:
    """Send the response head and stream the body through, chunk by chunk."""
    named: set[bytes] = set()
    content_type = b""
    length: int | None = None
    for name, value in response.headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
        elif name == b"content-type":
            content_type = value.lower()
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    headers = [(n, v) for n, v in response.headers if n not in _RESPONSE_DROPPED and n not in named]
    headers.append((DECISION_HEADER, decision_id.encode()))
    headers.append((ENDPOINT_HEADER, endpoint.id.encode()))
    headers.append((COUNTRY_HEADER, endpoint.country.encode()))
    tap = UsageTap(content_type, length)
    watcher = None
    if length is None:
        # An open-ended body (a stream): watch for the client going away meanwhile, or an
        # idle stream would hold the upstream connection until its next event.
        watcher = _watch_disconnect(receive, response)
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        first = watcher is not None  # a stream: its first byte's time is measured
        while (chunk := await response.chunk()) is not None:
            if first:
                first = False
                metrics.time_to_first_byte(
                    endpoint=endpoint.id, seconds=time.perf_counter() - started
                )
            tap.feed(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return tap, None
    except UpstreamError as exc:
        # Bytes have reached the client: no failover now. Returning without completing the
        # response makes the server drop the connection, so the client sees a broken response.
        if watcher is not None and watcher.done():
            return tap, "client disconnected"
        log.warning("endpoint %s failed mid-response: %s", endpoint.id, exc)
        return tap, f"upstream failed mid-response: {exc}"
    finally:
        response.close()
        if watcher is not None:
            watcher.cancel()


def _watch_disconnect(receive: Any, response: UpstreamResponse) -> asyncio.Task:
    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                response.abort()
                return

    return asyncio.get_running_loop().create_task(watch(), name="geopin-disconnect-watch")


async def _record_outcome(
    runtime: Runtime,
    *,
    tap: UsageTap | None,
    **fields: Any,
) -> None:
    try:
        await runtime.audit.record(
            outcome_record(
                time=datetime.now(UTC),
                bytes_out=tap.bytes_out if tap else None,
                usage=tap.usage() if tap else None,
                **fields,
            )
        )
    except AuditError as exc:
        log.error("outcome of decision %s not recorded: %s", fields["decision_id"], exc)
