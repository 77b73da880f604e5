"""Trying a decision's endpoints in turn, and streaming the first answer below 500 through.

The attempts are the decision's candidates that speak the client's API, in routing's order.
An endpoint is tried only when its route is usable and its breaker lets a request through; a
connection error, a timeout or a 5xx moves on to the next one, up to ``max_attempts``. Once an
answer's head has gone to the client there is no failover: an upstream failing mid-response
leaves the client a broken response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from geopin.errors import UpstreamError
from geopin.policy.decision import Decision, Endpoint
from geopin.proxy import refusal
from geopin.proxy.exchange import Exchange
from geopin.proxy.forward import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from geopin.proxy.later import Later
from geopin.proxy.outcome import observe_usage, record_outcome
from geopin.proxy.refusal import COUNTRY_HEADER, DECISION_HEADER, ENDPOINT_HEADER, ErrorResponse
from geopin.proxy.request import ClientGone
from geopin.proxy.state import Runtime, RuntimeState
from geopin.proxy.upstream import API_OF_KIND, ClientCall, build_request, forwardable_headers
from geopin.proxy.usage import UsageTap
from geopin.proxy.watch import StreamWatch
from geopin.routing.health import HealthBoard
from geopin.telemetry.metrics import Metrics
from geopin.telemetry.tracing import AttemptSpan, RequestTrace, provider_name, replace_trace_headers

log = logging.getLogger(__name__)

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


async def forward(
    runtime: Runtime,
    state: RuntimeState,
    call: ClientCall,
    scope: dict,
    decision: Decision,
    attempts: tuple[Endpoint, ...],
    decision_id: str,
    started: float,
    receive: Any,
    send: Any,
    exchange: Exchange,
    *,
    metrics: Metrics,
    max_attempts: int,
    retry_after: int,
) -> ErrorResponse | None:
    """Answer with the first of ``attempts`` to answer below 500, or the refusal to send."""
    board = runtime.health
    trace = exchange.trace
    forwarded = forwardable_headers(scope["headers"])
    # What earlier responses left to do runs while this request waits for its answer's head;
    # for a streamed call, once its first event has gone (``runtime.later``).
    idle = None if call.streamed else runtime.later.run
    tried: list[str] = []
    timeouts = 0
    failure = "no compliant endpoint is available now"
    left: str | None = None  # the endpoint the last attempt failed on
    for endpoint in attempts:
        if len(tried) >= max_attempts:
            break
        route = state.routes.get(endpoint.id)
        if route is None or not route.usable:
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
        guard = runtime.head_watch.start(scope, receive)
        try:
            response = await runtime.client.send(build_request(route, call, sending), idle=idle)
        except asyncio.CancelledError:
            if not guard.tripped:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancellation was the guard's own, and ends here
            attempt.end(error="client_disconnected")
            record_outcome(
                runtime, exchange, call, decision, decision_id, started,
                endpoint=None, attempts=tried, status=499, bytes_out=None, usage=None,
                error="client disconnected before the answer began",
            )  # fmt: skip
            raise ClientGone from None
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
        finally:
            runtime.head_watch.done(guard)
        elapsed = time.perf_counter() - sent
        if response.status >= 500:
            metrics.upstream(endpoint=endpoint.id, status=response.status, duration_s=elapsed)
            response.close()
            attempt.end(status=response.status)
            metrics.upstream_error(endpoint=endpoint.id, kind="status")
            board.observe_failure(endpoint.id, f"HTTP {response.status}", time.monotonic())
            failure = f"endpoint {endpoint.id} answered HTTP {response.status}"
            left = endpoint.id
            continue
        exchange.status = response.status
        exchange.endpoint = endpoint.id
        exchange.processing_country = endpoint.country
        exchange.failovers = len(tried) - 1
        answered = partial(
            _answered, metrics=metrics, board=board, trace=trace, attempt=attempt,
            endpoint=endpoint, status=response.status, elapsed=elapsed,
            failovers=len(tried) - 1, provider=provider,
        )  # fmt: skip
        tap, error = await _relay(
            response, endpoint, decision_id, scope, receive, send, metrics, started,
            runtime.later, answered,
        )  # fmt: skip
        exchange.bytes_out = tap.bytes_out
        stored = isinstance(call.body, dict) and call.body.get("store") is True
        made = tap.made(stored_completion=stored)
        if made is not None and error is None and response.status < 300:
            runtime.objects.learn(exchange.tenant, made, endpoint.id)  # its later calls go there
            exchange.object_id = made
        # The usage the answer reports, and its outcome record: in the router's next idle moment.
        ended = time.perf_counter()
        runtime.later.add(
            _after_answer, runtime=runtime, exchange=exchange, call=call, decision=decision,
            decision_id=decision_id, started=started, endpoint=endpoint, tried=tried,
            status=response.status, tap=tap, error=error, metrics=metrics, provider=provider,
            duration_s=ended - sent, ended=ended,
        )  # fmt: skip
        return None
    if not tried and not any(API_OF_KIND[e.kind] == call.api for e in decision.candidates):
        error_response = refusal.api_not_served(decision_id, call.model, call.api)
        failure = "no permitted endpoint speaks the client's API"
    elif tried and timeouts == len(tried):
        error_response = refusal.gateway_timeout(
            decision_id, f"no compliant endpoint answered in time ({failure})"
        )
    else:
        error_response = refusal.unavailable(decision_id, failure, retry_after)
    exchange.failovers = max(len(tried) - 1, 0)
    record_outcome(
        runtime, exchange, call, decision, decision_id, started,
        endpoint=None, attempts=tried, status=error_response.status,
        bytes_out=None, usage=None, error=failure,
    )  # fmt: skip
    return error_response


def _answered(
    *,
    metrics: Metrics,
    board: HealthBoard,
    trace: RequestTrace,
    attempt: AttemptSpan,
    endpoint: Endpoint,
    status: int,
    elapsed: float,
    failovers: int,
    provider: str,
) -> None:
    """An endpoint answered below 500: its attempt's metric and span, its health, the route
    on the request's span. Done once the answer's first bytes have gone to the client."""
    metrics.upstream(endpoint=endpoint.id, status=status, duration_s=elapsed)
    attempt.end(status=status)
    board.observe_success(endpoint.id, elapsed, time.monotonic())
    trace.routed(
        endpoint=endpoint.id,
        processing_country=endpoint.country,
        failovers=failovers,
        provider=provider,
    )


def _after_answer(
    *,
    runtime: Runtime,
    exchange: Exchange,
    call: ClientCall,
    decision: Decision,
    decision_id: str,
    started: float,
    endpoint: Endpoint,
    tried: list[str],
    status: int,
    tap: UsageTap,
    error: str | None,
    metrics: Metrics,
    provider: str,
    duration_s: float,
    ended: float,
) -> None:
    """After an answer has gone: its usage, for telemetry, and its outcome record."""
    # The upstream's token counts, for telemetry and the record; a call that names no model
    # ran none (a stored response read back carries the usage of the call that made it).
    usage = None if call.model is None else tap.usage()
    if call.model is not None:
        observe_usage(
            exchange,
            usage if error is None else None,
            metrics,
            operation=_operation_name(call.operation),
            provider=provider,
            model=call.model,
            endpoint=endpoint.id,
            duration_s=duration_s,
            error=error,
        )
    record_outcome(
        runtime, exchange, call, decision, decision_id, started,
        endpoint=endpoint, attempts=tried, status=status,
        bytes_out=tap.bytes_out, usage=usage, error=error, ended=ended,
    )  # fmt: skip


async def _relay(
    response: UpstreamResponse,
    endpoint: Endpoint,
    decision_id: str,
    scope: dict,
    receive: Any,
    send: Any,
    metrics: Metrics,
    started: float,
    later: Later,
    answered: Callable[[], None],
) -> tuple[UsageTap, str | None]:
    """Send the response head and stream the body through, chunk by chunk. Once the first
    bytes have gone, ``answered()`` is called (the attempt's bookkeeping: the client does not
    wait for it), and once a stream's have, ``later``'s queue runs (the wait for the next event
    is idle)."""
    named: set[bytes] = set()
    content_type = b""
    length: int | None = None
    headers = []
    for name, value in response.headers:
        if name == b"content-type":
            content_type = value.lower()
        elif name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
        if name not in _RESPONSE_DROPPED:
            headers.append((name, value))
    if named:  # what the upstream's Connection header names goes no further either
        headers = [(n, v) for n, v in headers if n not in named]
    headers.append((DECISION_HEADER, decision_id.encode()))
    headers.append((ENDPOINT_HEADER, endpoint.id.encode()))
    headers.append((COUNTRY_HEADER, endpoint.country.encode()))
    tap = UsageTap(content_type, length)
    stream = length is None  # an open-ended body
    watch: StreamWatch | None = None
    told = False  # answered() called
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        first = stream  # a stream: its first byte's time is measured
        while True:
            if stream and watch is None and response.waiting:
                # From the first wait on: a client that goes away is noticed at once, or an
                # idle stream would hold the upstream connection until its next event.
                watch = StreamWatch(scope, receive, response)
            chunk = await response.chunk()
            if chunk is None:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not told:
                told = True
                answered()
            if first:
                first = False
                metrics.time_to_first_byte(
                    endpoint=endpoint.id, seconds=time.perf_counter() - started
                )
                later.run_soon()
            tap.feed(chunk)
        await send({"type": "http.response.body", "body": b""})
        return tap, None
    except UpstreamError as exc:
        # Bytes have reached the client: no failover now. Returning without completing the
        # response makes the server drop the connection, so the client sees a broken response.
        if watch is not None and watch.gone:
            return tap, "client disconnected"
        log.warning("endpoint %s failed mid-response: %s", endpoint.id, exc)
        return tap, f"upstream failed mid-response: {exc}"
    finally:
        response.close()
        if watch is not None:
            watch.stop()
        if not told:  # no body, or the answer broke off before its first bytes went
            answered()


def _error_kind(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    return "other"


def _operation_name(operation: str) -> str:
    """``gen_ai.operation.name`` of a forwarded call, per the GenAI conventions."""
    if operation in ("/chat/completions", "/messages", "/responses"):
        return "chat"
    if operation == "/completions":
        return "text_completion"
    if operation == "/embeddings":
        return "embeddings"
    return "other"
