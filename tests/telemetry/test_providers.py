"""An unreachable collector must never slow a request down nor hold up shutdown."""

from __future__ import annotations

import gc
import statistics
import time

import pytest

from geopin.telemetry import Telemetry

from .conftest import closed_port, make_settings

EXPORT_TIMEOUT_S = 1.0
REQUESTS = 3000


def _one_request(telemetry: Telemetry, i: int) -> None:
    trace = telemetry.tracing.start_request(
        method="POST", path="/v1/chat/completions", route="/v1/chat/completions", headers=[]
    )
    decide = trace.start_decision()
    decide.end()
    trace.decided(
        decision_id=f"dec_{i}",
        action="route",
        country="DE",
        subdivision=None,
        location_source="mmdb",
        policy_version="v1",
        rules=["eu"],
    )
    attempt = trace.start_attempt(endpoint="eu-1", server_address="eu1.example", server_port=443)
    attempt.trace_headers()
    attempt.end(status=200)
    trace.end(status=200)
    metrics = telemetry.metrics
    metrics.request(
        action="route", country="DE", processing_country="DE", status=200, duration_s=0.05
    )
    metrics.upstream(endpoint="eu-1", status=200, duration_s=0.04)


def _exercise(telemetry: Telemetry, seconds: float) -> list[float]:
    """Record requests for at least ``seconds`` (so exports are attempted meanwhile).

    The cyclic garbage collector is held off while measuring: a full collection of
    the test process is a pause of its own, not one the exporters cause.
    """
    times = []
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        i = 0
        while i < REQUESTS or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            _one_request(telemetry, i)
            times.append(time.perf_counter() - t0)
            i += 1
            if i >= REQUESTS:
                time.sleep(0.01)  # keep going past the first export without burning the CPU
    finally:
        gc.enable()
    return times


def _unreachable(endpoint: str, protocol: str) -> Telemetry:
    return Telemetry.from_settings(
        make_settings(
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            otlp_timeout_s=EXPORT_TIMEOUT_S,
            metrics_export_interval_s=0.2,
            span_queue_size=256,  # small, so the queue fills and spans are dropped
            shutdown_timeout_s=1.0,
        )
    )


def _check_fast_and_bounded(telemetry: Telemetry) -> None:
    times = _exercise(telemetry, seconds=2.5)
    # An export blocking the caller would cost a whole export timeout (1 s), and it
    # would do so at every export (metrics are exported every 0.2 s), so it shows as
    # a run of slow calls; a lone stall of the shared machine shows as one.
    slow = [t for t in times if t > 0.1]
    assert len(slow) <= 2, slow
    assert max(times) < EXPORT_TIMEOUT_S * 0.9, max(times)
    assert statistics.median(times) < 0.002, statistics.median(times)
    started = time.perf_counter()
    telemetry.shutdown()
    assert time.perf_counter() - started < 1.0 + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_dead_collector_keeps_recording_fast(protocol):
    telemetry = _unreachable(f"http://127.0.0.1:{closed_port()}", protocol)
    assert telemetry.tracing.enabled
    _check_fast_and_bounded(telemetry)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_black_hole_collector_keeps_recording_fast(protocol, black_hole):
    telemetry = _unreachable(f"http://127.0.0.1:{black_hole.port}", protocol)
    _check_fast_and_bounded(telemetry)
    # The exporters did try: the test would prove nothing if they never connected.
    assert black_hole.accepted


def test_shutdown_gives_up_in_time(black_hole):
    telemetry = _unreachable(f"http://127.0.0.1:{black_hole.port}", "http/protobuf")
    for i in range(50):
        _one_request(telemetry, i)
    started = time.perf_counter()
    telemetry.shutdown(timeout_s=0.3)
    assert time.perf_counter() - started < 0.8
    assert telemetry.shutdown() is True  # a second call returns at once


def test_settings_decide_what_is_built():
    quiet = Telemetry.from_settings(make_settings(prometheus=False))
    assert quiet.tracer_provider is None and quiet.meter_provider is None
    assert not quiet.metrics.enabled and not quiet.tracing.enabled
    scrape_only = Telemetry.from_settings(make_settings())
    assert scrape_only.tracer_provider is None and scrape_only.meter_provider is not None
    assert scrape_only.metrics.enabled and not scrape_only.tracing.enabled
    no_sampling = Telemetry.from_settings(
        make_settings(otlp_endpoint=f"http://127.0.0.1:{closed_port()}", traces_sample_ratio=0)
    )
    assert not no_sampling.tracing.enabled and no_sampling.metrics.enabled
    for telemetry in (quiet, scrape_only):
        assert telemetry.shutdown()
    # Its last export goes to a closed port: it may finish or be given up on a busy machine,
    # but never outlasts the shutdown timeout (test_shutdown_gives_up_in_time holds that).
    started = time.perf_counter()
    no_sampling.shutdown(timeout_s=1.0)
    assert time.perf_counter() - started < 1.0 + 0.5


def test_resource_names_the_service():
    telemetry = Telemetry.from_settings(make_settings(service_name="geopin-eu"))
    attributes = telemetry.meter_provider._sdk_config.resource.attributes
    assert attributes["service.name"] == "geopin-eu"
    assert attributes["service.version"]
    telemetry.shutdown()
