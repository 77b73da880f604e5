"""Counters and histograms added up in geopin, handed to the OpenTelemetry SDK at collection.

The SDK's synchronous instruments cost 7-10 µs per measurement (each one builds a Measurement,
reads the clock and the context, offers an exemplar and hashes its attribute set), and a proxied
request makes seven: more than a tenth of the router's whole latency budget. Here a measurement
is a dict lookup by a tuple of already-bounded values, a bisect and a few additions under a
lock (about 1 µs). When a reader collects (a Prometheus scrape, an OTLP export, a test's
in-memory reader), the totals become SDK data points, cumulative, merged into what the SDK
collected itself (the observable gauges), so every reader and exporter sees one set of metrics.

The Python SDK has no public "metric producer" hook yet, so :func:`attach` wraps the collect
callback the MeterProvider gives each of its readers; that callback is the one seam between a
provider and its readers, and ``tests/telemetry/test_aggregate.py`` holds it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

Key = tuple[Any, ...]


class _Instrument:
    __slots__ = ("name", "unit", "description", "attributes", "series")

    def __init__(self, name: str, unit: str, description: str, attributes: Sequence[str]):
        self.name = name
        self.unit = unit
        self.description = description
        self.attributes = tuple(attributes)  # the names of the key's values, in order
        self.series: dict[Key, Any] = {}

    def _attributes(self, key: Key) -> dict[str, Any]:
        # None stands for an attribute the measurement did not have.
        return {n: v for n, v in zip(self.attributes, key, strict=True) if v is not None}


class Counter(_Instrument):
    """A monotonic sum per attribute set."""

    __slots__ = ()

    def data(self, start_ns: int, now_ns: int) -> Sum:
        points = [
            NumberDataPoint(self._attributes(key), start_ns, now_ns, value)
            for key, value in list(self.series.items())
        ]
        return Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)


class _HistogramState:
    __slots__ = ("buckets", "count", "sum", "min", "max")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class BucketHistogram(_Instrument):
    """Explicit-bucket histogram per attribute set (bucket i holds bounds[i-1] < v <= bounds[i],
    as OpenTelemetry defines them; the last bucket is the overflow)."""

    __slots__ = ("bounds",)

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        attributes: Sequence[str],
        bounds: Sequence[float],
    ) -> None:
        super().__init__(name, unit, description, attributes)
        self.bounds = tuple(float(b) for b in bounds)

    def data(self, start_ns: int, now_ns: int) -> Histogram:
        points = [
            HistogramDataPoint(
                self._attributes(key),
                start_ns,
                now_ns,
                state.count,
                state.sum,
                list(state.buckets),
                self.bounds,
                state.min,
                state.max,
            )
            for key, state in list(self.series.items())
        ]
        return Histogram(points, AggregationTemporality.CUMULATIVE)


class Aggregates:
    """Every synchronous instrument of one process. Safe from any thread."""

    def __init__(self, scope: InstrumentationScope) -> None:
        self.scope = scope
        self.start_ns = time.time_ns()
        self._lock = threading.Lock()
        self._instruments: list[Counter | BucketHistogram] = []

    def counter(
        self, name: str, *, unit: str, description: str, attributes: Sequence[str] = ()
    ) -> Counter:
        counter = Counter(name, unit, description, attributes)
        self._instruments.append(counter)
        return counter

    def histogram(
        self,
        name: str,
        *,
        unit: str,
        description: str,
        bounds: Sequence[float],
        attributes: Sequence[str] = (),
    ) -> BucketHistogram:
        histogram = BucketHistogram(name, unit, description, attributes, bounds)
        self._instruments.append(histogram)
        return histogram

    def add(self, counter: Counter, key: Key, amount: float = 1) -> None:
        with self._lock:
            series = counter.series
            series[key] = series.get(key, 0) + amount

    def record(self, histogram: BucketHistogram, key: Key, value: float) -> None:
        if not value >= 0:  # negative or NaN: nothing a duration or a count can be
            return
        with self._lock:
            state = histogram.series.get(key)
            if state is None:
                state = histogram.series[key] = _HistogramState(len(histogram.bounds) + 1)
            state.buckets[bisect_left(histogram.bounds, value)] += 1
            state.count += 1
            state.sum += value
            if value < state.min:
                state.min = value
            if value > state.max:
                state.max = value

    def metrics(self) -> list[Metric]:
        """The current totals as SDK metrics (instruments without data are left out)."""
        now = time.time_ns()
        out = []
        with self._lock:
            for instrument in self._instruments:
                if instrument.series:
                    data = instrument.data(self.start_ns, now)
                    out.append(
                        Metric(instrument.name, instrument.description, instrument.unit, data)
                    )
        return out

    def merge(self, data: MetricsData | None, resource: Resource) -> MetricsData:
        """``data`` (what the SDK collected) with these totals added under this scope."""
        own = self.metrics()
        if data is None:
            data = MetricsData([])
        if not own:
            return data
        resource_metrics = list(data.resource_metrics)
        if not resource_metrics:
            resource_metrics = [ResourceMetrics(resource, [], "")]
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for i, scope in enumerate(scopes):
            if scope.scope.name == self.scope.name:
                scopes[i] = ScopeMetrics(scope.scope, [*scope.metrics, *own], scope.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self.scope, own, ""))
        resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resource_metrics)


def attach(readers: Iterable[MetricReader], aggregates: Aggregates, resource: Resource) -> None:
    """Make every one of ``readers`` (already registered on a MeterProvider) see
    ``aggregates`` in each collection."""
    for reader in readers:
        collect: Callable[..., MetricsData | None] | None = reader._collect  # type: ignore[attr-defined,assignment]
        if collect is None:
            raise RuntimeError(f"{type(reader).__name__} is not registered on a MeterProvider")
        reader._set_collect_callback(_merging(collect, aggregates, resource))


def _merging(
    collect: Callable[..., MetricsData | None], aggregates: Aggregates, resource: Resource
) -> Callable[..., MetricsData]:
    def merged(reader: MetricReader, *args: Any, **kwargs: Any) -> MetricsData:
        return aggregates.merge(collect(reader, *args, **kwargs), resource)

    return merged
