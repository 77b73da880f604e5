"""After a forwarded call: its GenAI usage for traces and metrics, and its outcome record."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from geopin.audit.records import outcome_record
from geopin.errors import AuditError
from geopin.policy.decision import Decision, Endpoint
from geopin.proxy.exchange import Exchange
from geopin.proxy.state import Runtime
from geopin.proxy.upstream import ClientCall
from geopin.proxy.usage import UsageTap
from geopin.telemetry.metrics import Metrics
from geopin.telemetry.tracing import NO_TRACE

log = logging.getLogger(__name__)


def observe_usage(
    exchange: Exchange,
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


def spawn_outcome(
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
    tap: UsageTap | None,
    error: str | None,
) -> None:
    """Record the outcome of a routed request once its response has gone.

    The latency is taken now; the record (and the usage parse behind it) is written later,
    off the request's path. ``endpoint`` is the one that answered, None when none did.
    """
    runtime.spawn(
        _record_outcome(
            runtime,
            decision_id=decision_id,
            endpoint=endpoint,
            attempts=attempts,
            status=status,
            latency_us=int((time.perf_counter() - started) * 1e6),
            model=call.model,
            tenant=exchange.tenant,
            location=exchange.location,
            policy_version=decision.policy_version,
            bytes_in=len(call.raw_body),
            tap=tap,
            error=error,
            trace_id=exchange.trace_id,
        ),
        name=f"geopin-outcome:{decision_id}",
    )


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
            ),
            linger=True,  # the response has gone; this record joins the next commit
        )
    except AuditError as exc:
        log.error("outcome of decision %s not recorded: %s", fields["decision_id"], exc)
