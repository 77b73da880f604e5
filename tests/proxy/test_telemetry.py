"""Telemetry of the proxy path end to end: a real router on a socket, spans and metrics caught
by the SDK's in-memory exporter and reader, the scrape endpoint, the access log, and
collectors that are down or never answer."""

from __future__ import annotations

import io
import json
import socket
import statistics
import threading
import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from geopin.telemetry import Telemetry, TelemetrySettings, configure_logging

from .conftest import (
    audit_records,
    endpoint_yaml,
    last_request,
    start_router,
    write_policy,
)

pytestmark = pytest.mark.slow

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Captured:
    def __init__(self, **settings: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry.from_settings(
            TelemetrySettings.model_validate(settings),
            span_processors=[SimpleSpanProcessor(self.spans)],
            metric_readers=[self.reader],
        )

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def setup(tmp_path, mocks):
    se = mocks("eu-se")
    endpoints = [
        # A dead endpoint first in rank, so a request fails over to Sweden.
        endpoint_yaml("eu-dead", f"http://127.0.0.1:{_closed_port()}/v1", "FR", priority=1),
        endpoint_yaml("eu-se", se.url + "/v1", "SE", priority=50),
    ]
    return tmp_path, write_policy(tmp_path / "policy", endpoints), se


def test_a_routed_request_is_traced_and_measured_end_to_end(setup):
    tmp, policy, se = setup
    captured = Captured()
    router = start_router(tmp, policy, with_telemetry=captured.telemetry)
    try:
        response = router.post(headers=router.headers(country="DE", traceparent=TRACEPARENT))
        assert response.status_code == 200, response.text
        decision_id = response.headers["x-geopin-decision-id"]
        _wait_for(lambda: any(s.kind is SpanKind.SERVER for s in captured.finished()))
        spans = captured.finished()
        (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
        attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
        by_name = {s.name: s for s in spans}

        # The client's trace is continued; every span is in it, under the server span.
        assert format(server.context.trace_id, "032x") == CLIENT_TRACE
        assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
        for child in [by_name["geopin.decide"], by_name["geopin.audit.commit"], *attempts]:
            assert child.parent.span_id == server.context.span_id
            assert child.context.trace_id == server.context.trace_id

        attributes = server.attributes
        assert server.name == "POST /v1/chat/completions"
        assert attributes["geopin.decision.id"] == decision_id
        assert attributes["geopin.decision.action"] == "route"
        assert attributes["geopin.client.country"] == "DE"
        assert attributes["geopin.location.source"]
        assert tuple(attributes["geopin.rules"]) == ("eu-in-eu",)
        assert attributes["geopin.endpoint"] == "eu-se"
        assert attributes["geopin.processing.country"] == "SE"
        assert attributes["geopin.failover.count"] == 1
        assert attributes["http.response.status_code"] == 200
        assert attributes["gen_ai.request.model"] == "gpt-4o"
        usage = response.json()["usage"]
        assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]

        # One CLIENT span per attempt: the dead endpoint, then Sweden, whose traceparent
        # reached the upstream in place of the client's.
        assert [a.attributes["geopin.endpoint"] for a in attempts] == ["eu-dead", "eu-se"]
        assert attempts[0].attributes["error.type"] == "connect"
        upstream_tp = last_request(se)["headers"]["traceparent"]
        assert upstream_tp.split("-")[1] == CLIENT_TRACE
        assert upstream_tp.split("-")[2] == format(attempts[1].context.span_id, "016x")

        # The audit record carries the trace id.
        (record,) = [r for r in audit_records(tmp) if r["kind"] == "decision"]
        assert record["decision_id"] == decision_id and record["trace_id"] == CLIENT_TRACE

        requests = {
            tuple(sorted(p.attributes.items())): p.value for p in captured.points("geopin.requests")
        }
        assert requests == {
            (
                ("geopin.action", "route"),
                ("geopin.client.country", "DE"),
                ("geopin.processing.country", "SE"),
                ("http.response.status_code", 200),
            ): 1
        }
        (failover,) = captured.points("geopin.failovers")
        assert dict(failover.attributes) == {"geopin.endpoint": "eu-dead"} and failover.value == 1
        (error,) = captured.points("geopin.upstream.errors")
        assert dict(error.attributes) == {"geopin.endpoint": "eu-dead", "error.type": "connect"}
        (decision,) = captured.points("geopin.decision.duration")
        assert decision.count == 1 and decision.sum < 0.01
        upstream = {p.attributes["geopin.endpoint"]: p.count for p in captured.points(
            "geopin.upstream.duration")}  # fmt: skip
        assert upstream == {"eu-dead": 1, "eu-se": 1}
        tokens = {
            p.attributes["gen_ai.token.type"]: p.sum
            for p in captured.points("gen_ai.client.token.usage")
        }
        assert tokens == {"input": usage["prompt_tokens"], "output": usage["completion_tokens"]}
        breakers = {
            p.attributes["geopin.endpoint"]: p.value
            for p in captured.points("geopin.endpoint.breaker_state")
        }
        assert breakers.get("eu-se", 0) == 0
    finally:
        router.stop()


def test_refusals_get_spans_and_metrics(setup):
    tmp, policy, _ = setup
    captured = Captured()
    router = start_router(tmp, policy, with_telemetry=captured.telemetry)
    try:
        denied = router.post(headers=router.headers(country="RU"))
        assert denied.status_code == 451
        unauthorized = router.post(headers={"cf-ipcountry": "DE"})
        assert unauthorized.status_code == 401
        _wait_for(lambda: len([s for s in captured.finished() if s.kind is SpanKind.SERVER]) == 2)
        servers = [s for s in captured.finished() if s.kind is SpanKind.SERVER]
        by_status = {s.attributes["http.response.status_code"]: s for s in servers}
        assert by_status[451].attributes["geopin.decision.action"] == "deny"
        assert (
            by_status[451].attributes["geopin.decision.id"]
            == denied.headers["x-geopin-decision-id"]
        )
        assert "geopin.decision.id" not in by_status[401].attributes
        counts = {
            (p.attributes["geopin.action"], p.attributes["http.response.status_code"]): p.value
            for p in captured.points("geopin.requests")
        }
        assert counts == {("deny", 451): 1, ("error", 401): 1}
        routes = {
            p.attributes["http.response.status_code"]: p.attributes["http.route"]
            for p in captured.points("http.server.request.duration")
        }
        assert routes == {451: "/v1/chat/completions", 401: "/v1/chat/completions"}
    finally:
        router.stop()


def test_an_untrusted_traceparent_starts_a_new_trace(setup):
    tmp, policy, se = setup
    captured = Captured(trust_client_traceparent=False)
    router = start_router(tmp, policy, with_telemetry=captured.telemetry)
    try:
        response = router.post(headers=router.headers(country="SE", traceparent=TRACEPARENT))
        assert response.status_code == 200
        _wait_for(lambda: any(s.kind is SpanKind.SERVER for s in captured.finished()))
        (server,) = [s for s in captured.finished() if s.kind is SpanKind.SERVER]
        assert format(server.context.trace_id, "032x") != CLIENT_TRACE
        assert server.parent is None
        upstream_tp = last_request(se)["headers"]["traceparent"]
        assert upstream_tp.split("-")[1] == format(server.context.trace_id, "032x")
    finally:
        router.stop()


def test_metrics_scrape_behind_the_admin_token(setup):
    tmp, policy, _ = setup
    router = start_router(tmp, policy, telemetry={"prometheus": True})
    try:
        assert router.post(headers=router.headers(country="SE")).status_code == 200
        assert httpx.get(router.url + "/_geopin/metrics", timeout=10).status_code == 401
        scrape = router.admin("GET", "/_geopin/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'geopin_requests_total{geopin_action="route",' in scrape.text
        assert "http_server_request_duration_seconds_bucket{" in scrape.text
        assert "geopin_policy_reloads_total" not in scrape.text  # nothing reloaded yet
        assert router.admin("POST", "/_geopin/reload").status_code == 200
        assert (
            'geopin_policy_reloads_total{result="success"'
            in router.admin("GET", "/_geopin/metrics").text
        )
        openapi = router.admin("GET", "/_geopin/openapi.json").json()
        assert "/_geopin/metrics" in openapi["paths"]
    finally:
        router.stop()


def test_metrics_scrape_is_off_by_default(setup):
    tmp, policy, _ = setup
    router = start_router(tmp, policy)
    try:
        off = router.admin("GET", "/_geopin/metrics")
        assert off.status_code == 404 and off.json()["error"]["code"] == "not_found"
    finally:
        router.stop()


def test_one_access_log_line_per_request_without_secrets(setup):
    tmp, policy, _ = setup
    out = io.StringIO()
    configure_logging("warning", stream=out)
    router = start_router(tmp, policy)
    try:
        response = router.post(
            "/v1/chat/completions?api_key=sk-in-query",
            headers=router.headers(country="SE", traceparent=TRACEPARENT),
        )
        assert response.status_code == 200
        assert router.post(headers=router.headers(country="RU")).status_code == 451
    finally:
        router.stop()
        configure_logging("info")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "geopin.access"]
    assert [line["status"] for line in access] == [200, 451]
    ok = access[0]
    assert ok["decision_id"] == response.headers["x-geopin-decision-id"]
    assert ok["trace_id"] == CLIENT_TRACE  # tracing off: the client's, as the audit has it
    assert ok["action"] == "route" and ok["endpoint"] == "eu-se"
    assert ok["client_country"] == "SE" and ok["processing_country"] == "SE"
    assert ok["client_network"] == "127.0.0.0/24"
    assert ok["tenant"] == "t1" and ok["bytes_in"] > 0 and ok["bytes_out"] > 0
    assert ok["path"] == "/v1/chat/completions"
    text = out.getvalue()
    assert router.keys["t1"] not in text and "sk-in-query" not in text
    assert "hello" not in text and "127.0.0.1" not in text


def _latencies(router, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = router.post(headers=router.headers(country="SE"))
        out.append(time.perf_counter() - started)
        assert response.status_code == 200
    return out


class _BlackHole:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.server.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()


@pytest.mark.parametrize("collector", ["closed-port", "black-hole"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_dead_collector_does_not_affect_requests(tmp_path, mocks, collector, protocol):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    hole = _BlackHole() if collector == "black-hole" else None
    port = hole.port if hole else _closed_port()
    settings = {
        "otlp_endpoint": f"http://127.0.0.1:{port}",
        "otlp_protocol": protocol,
        "otlp_timeout_s": 2,
        "metrics_export_interval_s": 0.2,  # exports keep failing while requests run
        "shutdown_timeout_s": 1,
    }
    router = start_router(tmp_path, policy, telemetry=settings)
    try:
        assert router.app.runtime.telemetry.tracing.enabled
        latencies = _latencies(router, 60)
        assert statistics.median(latencies) < 0.1, latencies
        assert max(latencies) < 1.0, max(latencies)
    finally:
        before = set(threading.enumerate())
        started = time.perf_counter()
        router.stop()
        if hole:
            hole.close()
    # The last export is abandoned after shutdown_timeout_s, not waited for.
    assert time.perf_counter() - started < 10
    # The abandoned exports end on their own once their timeout passes: wait for them, so
    # their retries (which draw on the global `random`) do not run into later tests.
    deadline = time.monotonic() + 2 * settings["otlp_timeout_s"] + 5
    for thread in before:
        if thread.name.startswith(("Otel", "geopin-telemetry")) and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
