"""Observability: OpenTelemetry traces and metrics, the Prometheus scrape, JSON logs.

``TelemetrySettings`` imports nothing from OpenTelemetry, so reading settings stays cheap; the
rest is loaded on first use::

    telemetry = Telemetry.from_settings(settings.telemetry)
    trace = telemetry.tracing.start_request(method=..., path=..., headers=scope["headers"])
    telemetry.metrics.request(action="route", country="DE", processing_country="DE", ...)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from geopin.telemetry.settings import TelemetrySettings

if TYPE_CHECKING:
    from geopin.telemetry.accesslog import access_log, client_prefix, configure_logging
    from geopin.telemetry.metrics import Metrics
    from geopin.telemetry.providers import Telemetry
    from geopin.telemetry.tracing import (
        AttemptSpan,
        RequestTrace,
        SpanHandle,
        Tracing,
        provider_name,
        replace_trace_headers,
    )

_LAZY = {
    "Telemetry": "geopin.telemetry.providers",
    "Metrics": "geopin.telemetry.metrics",
    "Tracing": "geopin.telemetry.tracing",
    "RequestTrace": "geopin.telemetry.tracing",
    "SpanHandle": "geopin.telemetry.tracing",
    "AttemptSpan": "geopin.telemetry.tracing",
    "provider_name": "geopin.telemetry.tracing",
    "replace_trace_headers": "geopin.telemetry.tracing",
    "access_log": "geopin.telemetry.accesslog",
    "client_prefix": "geopin.telemetry.accesslog",
    "configure_logging": "geopin.telemetry.accesslog",
}

__all__ = [
    "AttemptSpan",
    "Metrics",
    "RequestTrace",
    "SpanHandle",
    "Telemetry",
    "TelemetrySettings",
    "Tracing",
    "access_log",
    "client_prefix",
    "configure_logging",
    "provider_name",
    "replace_trace_headers",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geopin.telemetry' has no attribute {name!r}")
    return getattr(import_module(module), name)
