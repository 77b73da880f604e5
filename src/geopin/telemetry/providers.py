"""Telemetry: the tracer and meter providers of one router process, built once from settings.

The providers are geopin's own, not OpenTelemetry's global ones (tests build several side by
side; :meth:`Telemetry.install_global` makes them global for libraries that want that).

An unreachable collector never slows a request down: spans wait in a bounded queue and leave
from the BatchSpanProcessor's thread, metrics from the PeriodicExportingMetricReader's thread,
each export bounded by ``otlp_timeout_s``; when the queue is full new spans are dropped.
Shutdown flushes from a helper thread and gives up after ``shutdown_timeout_s``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence

from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from geopin import __version__
from geopin.telemetry.aggregate import attach
from geopin.telemetry.metrics import SCOPE, Metrics
from geopin.telemetry.prometheus import CONTENT_TYPE, PrometheusReader, WorkerSnapshots, render
from geopin.telemetry.settings import TelemetrySettings
from geopin.telemetry.tracing import Tracing

log = logging.getLogger(__name__)

_BATCH_DELAY_MS = 1000
# geopin adds its request metrics up itself, cumulatively (see aggregate.py); the gauges are
# cumulative anyway, so every export says the same kind of thing whatever OTEL_* asks for.
_CUMULATIVE: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}
_MAX_EXPORT_BATCH = 512


class Telemetry:
    """Owns the providers; hands out :attr:`tracing` and :attr:`metrics` to the router."""

    prometheus_content_type = CONTENT_TYPE

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        prometheus: PrometheusReader | None,
        snapshots: WorkerSnapshots | None = None,
    ) -> None:
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._prometheus = prometheus
        self._snapshots = snapshots
        self._closed = False
        tracer = tracer_provider.get_tracer(SCOPE, __version__) if tracer_provider else None
        meter = meter_provider.get_meter(SCOPE, __version__) if meter_provider else None
        self.tracing = Tracing(tracer, trust_client_traceparent=settings.trust_client_traceparent)
        self.metrics = Metrics(meter)

    @classmethod
    def from_settings(
        cls,
        settings: TelemetrySettings | None = None,
        *,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
        snapshot_interval_s: float = 5.0,
    ) -> Telemetry:
        """Build everything ``settings`` asks for. ``span_processors`` and ``metric_readers``
        are added to what the settings configure (tests pass in-memory ones)."""
        settings = settings or TelemetrySettings()
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": __version__,
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        processors = list(span_processors)
        readers = list(metric_readers)
        if settings.tracing:
            processors.append(
                BatchSpanProcessor(
                    _span_exporter(settings),
                    max_queue_size=settings.span_queue_size,
                    schedule_delay_millis=_BATCH_DELAY_MS,
                    max_export_batch_size=min(_MAX_EXPORT_BATCH, settings.span_queue_size),
                    export_timeout_millis=settings.otlp_timeout_s * 1000,
                )
            )
        if settings.exporting:
            readers.append(
                PeriodicExportingMetricReader(
                    _metric_exporter(settings),
                    export_interval_millis=settings.metrics_export_interval_s * 1000,
                    export_timeout_millis=settings.otlp_timeout_s * 1000,
                )
            )
        prometheus = PrometheusReader() if settings.prometheus else None
        if prometheus is not None:
            readers.append(prometheus)

        tracer_provider = None
        if processors:
            tracer_provider = TracerProvider(
                sampler=ParentBased(TraceIdRatioBased(settings.traces_sample_ratio)),
                resource=resource,
                shutdown_on_exit=False,  # shutdown() is bounded; an atexit flush would not be
            )
            for processor in processors:
                tracer_provider.add_span_processor(processor)
        meter_provider = None
        if readers:
            meter_provider = MeterProvider(
                metric_readers=readers, resource=resource, shutdown_on_exit=False
            )
        snapshots = None
        if prometheus is not None and settings.metrics_dir is not None:
            snapshots = WorkerSnapshots(settings.metrics_dir, prometheus, snapshot_interval_s)
            snapshots.start()
        telemetry = cls(
            settings,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            prometheus=prometheus,
            snapshots=snapshots,
        )
        if telemetry.metrics.aggregates is not None:
            attach(readers, telemetry.metrics.aggregates, resource)
        return telemetry

    @property
    def serves_metrics(self) -> bool:
        """Whether ``GET /_geopin/metrics`` has anything to serve (else answer 404)."""
        return self._prometheus is not None

    def render_metrics(self) -> str:
        """The Prometheus text exposition of every worker's metrics (``""`` when off).

        Runs the observable-gauge callbacks: call it off the event loop
        (``await asyncio.to_thread(telemetry.render_metrics)``) if a callback may block.
        """
        if self._prometheus is None:
            return ""
        if self._snapshots is not None:
            return self._snapshots.render()
        return render(self._prometheus.families())

    def install_global(self) -> None:
        """Make these providers OpenTelemetry's global ones (once per process)."""
        if self.tracer_provider is not None:
            trace_api.set_tracer_provider(self.tracer_provider)
        if self.meter_provider is not None:
            metrics_api.set_meter_provider(self.meter_provider)

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Flush and stop, waiting at most ``timeout_s`` (``shutdown_timeout_s`` by default).

        Returns False if the exports did not finish in time; they are then abandoned (their
        threads are daemons) rather than holding up the process's exit.
        """
        if self._closed:
            return True
        self._closed = True
        timeout_s = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        worker = threading.Thread(
            target=self._shutdown_all, args=(timeout_s,), name="geopin-telemetry-shutdown"
        )
        worker.daemon = True
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("telemetry export did not finish within %.1fs; giving up", timeout_s)
            return False
        return True

    def _shutdown_all(self, timeout_s: float) -> None:
        if self._snapshots is not None:
            self._snapshots.close()
        try:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
        except Exception as exc:  # a failing exporter must not stop the other one
            log.warning("telemetry traces shutdown failed: %s", exc)
        try:
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)
        except Exception as exc:
            log.warning("telemetry metrics shutdown failed: %s", exc)


def _headers(settings: TelemetrySettings) -> dict[str, str]:
    return {name: value.get_secret_value() for name, value in settings.otlp_headers.items()}


def _span_exporter(settings: TelemetrySettings) -> SpanExporter:
    endpoint = settings.otlp_endpoint
    assert endpoint is not None
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=endpoint,
            insecure=endpoint.startswith("http://"),
            headers=_headers(settings),
            timeout=settings.otlp_timeout_s,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(
        endpoint=endpoint + "/v1/traces",
        headers=_headers(settings),
        timeout=settings.otlp_timeout_s,
    )


def _metric_exporter(settings: TelemetrySettings):  # -> MetricExporter
    endpoint = settings.otlp_endpoint
    assert endpoint is not None
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            endpoint=endpoint,
            insecure=endpoint.startswith("http://"),
            headers=_headers(settings),
            timeout=settings.otlp_timeout_s,
            preferred_temporality=_CUMULATIVE,
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(
        endpoint=endpoint + "/v1/metrics",
        headers=_headers(settings),
        timeout=settings.otlp_timeout_s,
        preferred_temporality=_CUMULATIVE,
    )
