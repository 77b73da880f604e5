from __future__ import annotations

import re
import time

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from geopin.telemetry import Telemetry, provider_name, replace_trace_headers
from geopin.telemetry.tracing import NO_TRACE, Tracing

from .conftest import make_settings

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
TRACEPARENT_RE = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _request(telemetry: Telemetry, headers=()):
    return telemetry.tracing.start_request(
        method="POST",
        path="/v1/chat/completions",
        route="/v1/chat/completions",
        headers=list(headers),
        server_address="router.example",
    )


def _full_sequence(trace, *, failover: bool = False):
    decide = trace.start_decision()
    decide.end()
    trace.decided(
        decision_id="dec_123",
        action="route",
        country="DE",
        subdivision="DE-BY",
        location_source="mmdb",
        policy_version="sha256:abc",
        rules=["eu-only", "no-training"],
    )
    audit = trace.start_audit()
    audit.end()
    headers = []
    if failover:
        first = trace.start_attempt(
            endpoint="eu-1", server_address="eu1.example", server_port=443, attempt=1
        )
        first.end(error="timeout")
    attempt = trace.start_attempt(
        endpoint="eu-2",
        server_address="eu2.example",
        server_port=443,
        attempt=2 if failover else 1,
        provider=provider_name("azure-openai"),
    )
    headers = attempt.trace_headers()
    attempt.end(status=200)
    trace.routed(
        endpoint="eu-2",
        processing_country="FR",
        failovers=1 if failover else 0,
        provider="azure.ai.openai",
    )
    trace.usage(model="gpt-4o", input_tokens=12, output_tokens=34)
    trace.end(status=200)
    return headers


def test_server_span_continues_client_traceparent(captured):
    trace = _request(captured.telemetry, [(b"traceparent", TRACEPARENT)])
    assert trace.trace_id == CLIENT_TRACE
    _full_sequence(trace)
    spans = {s.name: s for s in captured.spans.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert server.parent.is_remote


def test_server_span_attributes(captured):
    trace = _request(captured.telemetry)
    _full_sequence(trace, failover=True)
    server = next(s for s in captured.spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    attrs = dict(server.attributes)
    assert attrs == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "url.scheme": "http",
        "http.route": "/v1/chat/completions",
        "server.address": "router.example",
        "geopin.decision.id": "dec_123",
        "geopin.decision.action": "route",
        "geopin.policy.version": "sha256:abc",
        "geopin.rules": ("eu-only", "no-training"),
        "geopin.client.country": "DE",
        "geopin.client.subdivision": "DE-BY",
        "geopin.location.source": "mmdb",
        "geopin.endpoint": "eu-2",
        "geopin.processing.country": "FR",
        "geopin.failover.count": 1,
        "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "http.response.status_code": 200,
    }
    assert server.status.status_code is StatusCode.UNSET


def test_children_hang_under_the_server_span(captured):
    trace = _request(captured.telemetry)
    _full_sequence(trace, failover=True)
    spans = captured.spans.get_finished_spans()
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    children = [s for s in spans if s is not server]
    assert sorted(s.name for s in children) == [
        "POST",
        "POST",
        "geopin.audit.commit",
        "geopin.decide",
    ]
    for child in children:
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    attempts = [s for s in children if s.kind is SpanKind.CLIENT]
    failed, served = sorted(attempts, key=lambda s: s.attributes["geopin.attempt"])
    assert failed.attributes["error.type"] == "timeout"
    assert failed.status.status_code is StatusCode.ERROR
    assert served.attributes["http.response.status_code"] == 200
    assert served.attributes["server.address"] == "eu2.example"
    assert served.attributes["server.port"] == 443
    assert served.status.status_code is StatusCode.UNSET


def test_injected_traceparent_names_the_attempt_span(captured):
    trace = _request(captured.telemetry, [(b"traceparent", TRACEPARENT)])
    headers = _full_sequence(trace)
    assert [name for name, _ in headers] == [b"traceparent"]
    match = TRACEPARENT_RE.match(headers[0][1])
    assert match, headers
    attempt = next(s for s in captured.spans.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert match.group(1).decode() == CLIENT_TRACE
    assert match.group(2).decode() == format(attempt.context.span_id, "016x")
    assert match.group(3) == b"01"


def test_replace_trace_headers_drops_the_clients_context():
    client = [
        (b"content-type", b"application/json"),
        (b"traceparent", TRACEPARENT),
        (b"tracestate", b"vendor=1"),
    ]
    ours = [(b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    out = replace_trace_headers(client, ours)
    assert out == [(b"content-type", b"application/json"), *ours]
    assert replace_trace_headers(client, []) is client  # tracing off: passed on untouched


def test_untrusted_traceparent_starts_a_new_trace():
    spans = InMemorySpanExporter()
    telemetry = Telemetry.from_settings(
        make_settings(trust_client_traceparent=False),
        span_processors=[SimpleSpanProcessor(spans)],
    )
    trace = _request(telemetry, [(b"traceparent", TRACEPARENT)])
    trace.end(status=200)
    (server,) = spans.get_finished_spans()
    assert format(server.context.trace_id, "032x") != CLIENT_TRACE
    assert server.parent is None
    telemetry.shutdown()


def test_client_unsampled_flag_is_followed(captured):
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00".encode()
    trace = _request(captured.telemetry, [(b"traceparent", unsampled)])
    headers = _full_sequence(trace)
    assert captured.spans.get_finished_spans() == ()
    # The context still travels upstream, marked not sampled.
    match = TRACEPARENT_RE.match(headers[0][1])
    assert match and match.group(1).decode() == CLIENT_TRACE and match.group(3) == b"00"


@pytest.mark.parametrize("bad", [b"garbage", b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01", b""])
def test_malformed_traceparent_starts_a_root(captured, bad):
    trace = _request(captured.telemetry, [(b"traceparent", bad)])
    trace.end(status=200)
    (server,) = captured.spans.get_finished_spans()
    assert server.parent is None


def test_server_errors_mark_the_span(captured):
    _request(captured.telemetry).end(status=503)
    _request(captured.telemetry).end(status=451)
    spans = captured.spans.get_finished_spans()
    by_status = {s.attributes["http.response.status_code"]: s for s in spans}
    assert by_status[503].status.status_code is StatusCode.ERROR
    assert by_status[503].attributes["error.type"] == "503"
    assert by_status[451].status.status_code is StatusCode.UNSET  # a refusal is not a fault


def test_a_request_span_ends_when_it_is_told_it_ended(captured):
    """The span of a response whose bookkeeping ran later still ends when the response did."""
    request = _request(captured.telemetry)
    ended = time.time_ns()
    time.sleep(0.01)
    request.end(status=200, end_ns=ended)
    (span,) = captured.spans.get_finished_spans()
    assert span.end_time == ended


def test_tracing_off_is_the_shared_no_op():
    telemetry = Telemetry.from_settings(make_settings(prometheus=False))
    assert not telemetry.tracing.enabled
    trace = _request(telemetry, [(b"traceparent", TRACEPARENT)])
    assert trace is NO_TRACE
    assert trace.trace_id is None
    assert _full_sequence(trace) == []
    assert telemetry.tracer_provider is None and telemetry.meter_provider is None
    assert telemetry.shutdown()


def test_no_tracer_means_no_trace():
    assert Tracing(None).start_request(method="GET", path="/", headers=[]) is NO_TRACE


def test_provider_names_follow_the_conventions():
    assert provider_name("openai-compatible") == "openai"
    assert provider_name("azure-openai") == "azure.ai.openai"
    assert provider_name("anthropic") == "anthropic"
