"""Factories for the telemetry tests: settings, a Telemetry wired to in-memory exporters, and
collectors that are not there (a closed port) or never answer (a black hole)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from geopin.telemetry import Telemetry, TelemetrySettings


def make_settings(**overrides: Any) -> TelemetrySettings:
    """Settings with the Prometheus scrape on (the tests' usual case; off by default)."""
    return TelemetrySettings.model_validate({"prometheus": True, **overrides})


@dataclass
class Captured:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def points(self, name: str) -> list[Any]:
        """Every data point of metric ``name`` collected now."""
        data: MetricsData | None = self.reader.get_metrics_data()
        out = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(metric.data.data_points)
        return out


@pytest.fixture
def captured() -> Iterator[Captured]:
    """A Telemetry recording every span and metric in memory (no OTLP, Prometheus on)."""
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = Telemetry.from_settings(
        make_settings(), span_processors=[SimpleSpanProcessor(spans)], metric_readers=[reader]
    )
    yield Captured(telemetry, spans, reader)
    telemetry.shutdown()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BlackHole:
    """A TCP server that accepts connections and never reads or answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self._server.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    with BlackHole() as hole:
        yield hole


_LOGGERS = ("geopin", "geopin.access", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging() changes process-wide loggers: put them back for the other tests
    (pytest's caplog listens on the root logger, which geopin's loggers stop propagating to)."""
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append(
            (logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        )
    yield
    for logger, handlers, level, propagate, disabled in saved:
        for added in [h for h in logger.handlers if h not in handlers]:
            added.close()  # a batching handler's timer thread ends with it
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
