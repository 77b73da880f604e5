"""The proxy path: a raw ASGI callable for ``/v1/*`` and Azure ``/openai/deployments/*``.

Per request, in this order: authenticate the router key (the tenant), read and parse the body
once, locate the client, decide, commit the decision record (503 if that fails: nothing is
forwarded unrecorded), then try the candidates in routing's order until one answers below 500
(never one outside the decision's candidates), and stream its answer through. The outcome
record follows the response without delaying it.
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
from geopin.proxy.forward import UpstreamResponse, UpstreamTimeout
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


class _ClientGone(Exception):
    """The client disconnected; there is nobody left to answer."""


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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        state = self.runtime.holder.current  # this request's snapshot, to its end
        try:
            error = await self._serve(state, scope, receive, send)
        except _ClientGone:
            return
        if error is not None:
            await refusal.send_error(send, error)

    async def _serve(
        self, state: RuntimeState, scope: dict, receive: Any, send: Any
    ) -> ErrorResponse | None:
        started = time.perf_counter()
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
        data_class, error = _data_class(state, headers)
        if error is not None:
            return error

        if deployment is None and (operation == "/models" or operation.startswith("/models/")):
            if method != "GET":
                return refusal.method_not_allowed(method, "GET")
            return await self._models(state, scope, operation, tenant, data_class, send)
        if method != "POST":
            return refusal.method_not_allowed(method, "POST")

        raw = await _read_body(receive, headers, self._limit)
        if isinstance(raw, ErrorResponse):
            return raw
        call, error = _parse_call(method, operation, deployment, query, raw)
        if error is not None:
            return error
        assert call is not None

        client, location = self._locate(state, scope, headers)
        ctx = RequestContext(location, call.model, tenant, data_class)
        decision = decide(state.policy, ctx)
        decision_id = new_record_id()
        trace_id = _trace_id(headers)
        runtime = self.runtime
        attempts: tuple[Endpoint, ...] = ()
        if decision.routed:
            health = runtime.health.snapshot(time.monotonic())
            attempts = order(decision, health, _affinity(tenant, client.ip))
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
            log.error("decision %s not recorded, request refused: %s", decision_id, exc)
            return refusal.audit_unavailable(decision_id, self._retry_after)
        if not decision.routed:
            return refusal.denied(decision, decision_id, self._rules_base)
        return await self._forward(
            state, call, headers, decision, attempts, decision_id, started, receive, send,
            tenant=tenant, location=location, trace_id=trace_id,
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
        tenant: str | None,
        location: Location,
        trace_id: str | None,
    ) -> ErrorResponse | None:
        runtime = self.runtime
        board = runtime.health
        forwarded = forwardable_headers(headers)
        tried: list[str] = []
        timeouts = 0
        failure = "no compliant endpoint is available now"
        for endpoint in attempts:
            if len(tried) >= self._max_attempts:
                break
            route = state.routes.get(endpoint.id)
            if route is None or not route.usable or API_OF_KIND[endpoint.kind] != call.api:
                continue
            if not board.acquire(endpoint.id, time.monotonic()):
                continue
            tried.append(endpoint.id)
            sent = time.perf_counter()
            try:
                response = await runtime.client.send(build_request(route, call, forwarded))
            except UpstreamError as exc:
                board.observe_failure(endpoint.id, str(exc), time.monotonic())
                timeouts += isinstance(exc, UpstreamTimeout)
                failure = f"endpoint {endpoint.id}: {exc}"
                continue
            if response.status >= 500:
                response.close()
                board.observe_failure(endpoint.id, f"HTTP {response.status}", time.monotonic())
                failure = f"endpoint {endpoint.id} answered HTTP {response.status}"
                continue
            board.observe_success(endpoint.id, time.perf_counter() - sent, time.monotonic())
            tap, error = await _relay(response, endpoint, decision_id, receive, send)
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
    response: UpstreamResponse, endpoint: Endpoint, decision_id: str, receive: Any, send: Any
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
        while (chunk := await response.chunk()) is not None:
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
