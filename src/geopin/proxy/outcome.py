"""After a forwarded call: its GenAI usage for traces and metrics, and its outcome record."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from geopin.audit.records import encode_outcome
from geopin.errors import AuditError
from geopin.policy.decision import Decision, Endpoint
from geopin.proxy.exchange import Exchange
from geopin.proxy.state import Runtime
from geopin.proxy.upstream import ClientCall
from geopin.telemetry.metrics import Metrics
from geopin.telemetry.tracing import NO_TRACE

log = logging.getLogger(__name__)


def observe_usage(
    exchange: Exchange,
    usage: Mapping[str, int] | None,
    metrics: Metrics,
    *,
    operation: str,
    provider: str,
    model: str,
    endpoint: str,
    duration_s: float,
    error: str | None,
) -> None:
    """The GenAI attributes and metrics of a forwarded call, when anything will read them."""
    if not metrics.enabled and exchange.trace is NO_TRACE:
        return
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


def record_outcome(
    runtime: Runtime,
    exchange: Exchange,
    call: ClientCall,
    decision: Decision,
    decision_id: str,
    started: float,
    *,
    endpoint: Endpoint | None,
    attempts: list[str],
    status: int,
    bytes_out: int | None,
    usage: Mapping[str, int] | None,
    error: str | None,
    ended: float | None = None,
) -> None:
    """Queue the outcome record of a routed request once its response has gone: encoded and
    handed to the audit writer in the router's next idle moment (``runtime.later``), it joins
    the next audit commit; nobody waits for it. ``endpoint`` is the one that answered, None
    when none did. Its latency is taken at ``ended`` (a ``perf_counter()``; default now)."""
    runtime.later.add(
        _submit_outcome,
        runtime=runtime,
        decision_id=decision_id,
        endpoint=endpoint,
        attempts=attempts,
        status=status,
        latency_us=int(((time.perf_counter() if ended is None else ended) - started) * 1e6),
        model=call.model,
        tenant=exchange.tenant,
        location=exchange.location,
        policy_version=decision.policy_version,
        bytes_in=len(call.raw_body),
        bytes_out=bytes_out,
        usage=usage,
        error=error,
        trace_id=exchange.trace_id,
        object_id=exchange.object_id,
    )


def _submit_outcome(*, runtime: Runtime, decision_id: str, **fields: Any) -> None:
    try:
        runtime.audit.submit(*encode_outcome(decision_id=decision_id, **fields))
    except AuditError as exc:
        log.error("outcome of decision %s not recorded: %s", decision_id, exc)
