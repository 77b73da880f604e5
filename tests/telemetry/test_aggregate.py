"""geopin's own counters and histograms agree with the SDK's and reach every reader."""

from __future__ import annotations

import math
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from geopin.telemetry.aggregate import Aggregates, attach

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)
SCOPE = InstrumentationScope("geopin-test")


def _points(reader: InMemoryMetricReader, name: str) -> list:
    data = reader.get_metrics_data()
    return [
        point
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.one_of(st.sampled_from(BOUNDS), st.floats(0, 10, allow_nan=False)),
        ),
        max_size=40,
    )
)
def test_histograms_and_counters_match_the_sdks_own(measurements):
    """The same measurements through the SDK's instruments and through Aggregates give the
    same buckets, counts, sums, minima and maxima (values on a bound included)."""
    sdk_reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[sdk_reader], shutdown_on_exit=False).get_meter("x")
    sdk_hist = meter.create_histogram("h", explicit_bucket_boundaries_advisory=BOUNDS)
    sdk_count = meter.create_counter("c")
    aggregates = Aggregates(SCOPE)
    hist = aggregates.histogram("h", unit="s", description="", bounds=BOUNDS, attributes=["k"])
    count = aggregates.counter("c", unit="1", description="", attributes=["k"])
    own_reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[own_reader], shutdown_on_exit=False)
    attach([own_reader], aggregates, Resource.create({}))
    for key, value in measurements:
        sdk_hist.record(value, {"k": key})
        sdk_count.add(1, {"k": key})
        aggregates.record(hist, (key,), value)
        aggregates.add(count, (key,))

    def summary(points):
        return {
            p.attributes["k"]: (
                tuple(p.bucket_counts),
                p.count,
                round(p.sum, 9),
                p.min,
                p.max,
            )
            for p in points
        }

    assert summary(_points(own_reader, "h")) == summary(_points(sdk_reader, "h"))
    counted = {p.attributes["k"]: p.value for p in _points(own_reader, "c")}
    assert counted == {p.attributes["k"]: p.value for p in _points(sdk_reader, "c")}


def test_none_values_leave_the_attribute_out_and_bad_values_are_dropped():
    aggregates = Aggregates(SCOPE)
    hist = aggregates.histogram("h", unit="s", description="", bounds=BOUNDS, attributes=["a", "b"])
    aggregates.record(hist, ("x", None), 0.2)
    aggregates.record(hist, ("x", None), -1.0)
    aggregates.record(hist, ("x", None), math.nan)
    (metric,) = aggregates.metrics()
    (point,) = metric.data.data_points
    assert dict(point.attributes) == {"a": "x"} and point.count == 1


def test_merged_under_the_scope_next_to_the_sdks_own_metrics():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    provider.get_meter(SCOPE.name).create_observable_gauge(
        "g", callbacks=[lambda options: [Observation(3)]]
    )
    aggregates = Aggregates(SCOPE)
    counter = aggregates.counter("c", unit="1", description="")
    attach([reader], aggregates, Resource.create({}))
    aggregates.add(counter, (), 2)
    data = reader.get_metrics_data()
    scopes = [sm for rm in data.resource_metrics for sm in rm.scope_metrics]
    assert [sm.scope.name for sm in scopes] == [SCOPE.name]
    assert {m.name for m in scopes[0].metrics} == {"g", "c"}
    # Cumulative: a second collection reports the total, not what came since.
    aggregates.add(counter, (), 1)
    assert [p.value for p in _points(reader, "c")] == [3]


def test_an_unregistered_reader_is_refused():
    try:
        attach([InMemoryMetricReader()], Aggregates(SCOPE), Resource.create({}))
    except RuntimeError as exc:
        assert "not registered" in str(exc)
    else:
        raise AssertionError("attach accepted a reader with no provider")


def test_measurements_from_many_threads_all_count():
    aggregates = Aggregates(SCOPE)
    hist = aggregates.histogram("h", unit="s", description="", bounds=BOUNDS)
    counter = aggregates.counter("c", unit="1", description="")

    def work() -> None:
        for i in range(2000):
            aggregates.record(hist, (), i / 1000)
            aggregates.add(counter, ())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    collected = [aggregates.metrics() for _ in range(20)]  # collecting meanwhile is safe
    for thread in threads:
        thread.join()
    assert collected
    by_name = {m.name: m for m in aggregates.metrics()}
    (h,) = by_name["h"].data.data_points
    (c,) = by_name["c"].data.data_points
    assert h.count == sum(h.bucket_counts) == 8000 and c.value == 8000
