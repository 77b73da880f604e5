"""Per-request cost of geopin's telemetry helpers; prints medians in microseconds.

    python bench/telemetry_bench.py [--rounds N]

One "request" is the whole sequence the proxy runs: a SERVER span continuing a client
traceparent, the decision and audit child spans, one upstream attempt with its injected
traceparent, the decision/route/usage attributes, and the request, decision, upstream and
model-operation metrics. Measured with telemetry off (nothing configured), with the default
settings (metrics for the Prometheus scrape, no tracing), and fully on (every request sampled,
spans through a BatchSpanProcessor to an exporter that drops them, so only geopin's and the
SDK's recording cost is measured, not the network). Each figure is the median over batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from geopin.telemetry import Telemetry, TelemetrySettings

BATCH = 2000
ROUNDS = 21
TARGET_OFF_US = 5.0
HEADERS = [
    (b"content-type", b"application/json"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def one_request(telemetry: Telemetry, i: int) -> None:
    tracing, metrics = telemetry.tracing, telemetry.metrics
    trace = tracing.start_request(
        method="POST", path="/v1/chat/completions", route="/v1/chat/completions", headers=HEADERS
    )
    decide = trace.start_decision()
    decide.end()
    metrics.decision(action="route", duration_s=0.00004)
    trace.decided(
        decision_id="dec_01JD6Z",
        action="route",
        country="DE",
        subdivision="DE-BY",
        location_source="mmdb",
        policy_version="sha256:1f2e",
        rules=("eu-only",),
    )
    audit = trace.start_audit()
    audit.end()
    attempt = trace.start_attempt(
        endpoint="eu-1", server_address="eu1.example", server_port=443, provider="openai"
    )
    attempt.trace_headers()
    attempt.end(status=200)
    metrics.upstream(endpoint="eu-1", status=200, duration_s=0.12)
    trace.routed(endpoint="eu-1", processing_country="DE", provider="openai")
    trace.usage(model="gpt-4o", input_tokens=120, output_tokens=380)
    trace.end(status=200)
    metrics.request(
        action="route",
        country="DE",
        processing_country="DE",
        status=200,
        duration_s=0.13,
        route="/v1/chat/completions",
    )
    metrics.model_operation(
        operation="chat",
        provider="openai",
        model="gpt-4o",
        endpoint="eu-1",
        duration_s=0.13,
        input_tokens=120,
        output_tokens=380,
    )


def measure(telemetry: Telemetry, rounds: int) -> float:
    """Median microseconds per request over ``rounds`` batches."""
    for i in range(BATCH):  # warm up
        one_request(telemetry, i)
    per_request = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(BATCH):
            one_request(telemetry, i)
        per_request.append((time.perf_counter() - started) / BATCH * 1e6)
    return statistics.median(per_request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    modes = {
        "off (nothing configured)": Telemetry.from_settings(TelemetrySettings(prometheus=False)),
        "default (Prometheus metrics, no tracing)": Telemetry.from_settings(TelemetrySettings()),
        "on (metrics + every request traced, batch processor)": Telemetry.from_settings(
            TelemetrySettings(),
            span_processors=[BatchSpanProcessor(_Discard(), max_queue_size=8192)],
        ),
    }
    results = {}
    for name, telemetry in modes.items():
        results[name] = measure(telemetry, args.rounds)
        telemetry.shutdown()
    print("| telemetry | µs per request (median) |")
    print("|---|---|")
    for name, micros in results.items():
        print(f"| {name} | {micros:.2f} |")
    off = results["off (nothing configured)"]
    if off > TARGET_OFF_US:
        print(f"telemetry off costs {off:.2f} µs per request, over {TARGET_OFF_US} µs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
