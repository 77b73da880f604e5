"""Telemetry settings: the ``telemetry:`` section of the router's settings.

Kept free of OpenTelemetry imports so that reading settings stays cheap. Environment variables
follow the router's scheme (``telemetry.otlp_endpoint`` is ``GEOPIN_TELEMETRY_OTLP_ENDPOINT``);
the OpenTelemetry ``OTEL_EXPORTER_OTLP_ENDPOINT`` family is deliberately not read for the
endpoint, protocol or headers, so what geopin exports is decided in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP collector URL, e.g. http://otel-collector:4317 (no export if unset).",
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="grpc", description="OTLP transport: grpc (port 4317) or http/protobuf (port 4318)."
    )
    otlp_headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent with every OTLP export (secret values)."
    )
    otlp_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Time one OTLP export may take, retries included."
    )
    service_name: str = Field(
        default="geopin", min_length=1, description="service.name of the resource."
    )
    traces_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (a client's sampled flag is followed).",
    )
    trust_client_traceparent: bool = Field(
        default=True, description="Continue the trace a client's traceparent header names."
    )
    span_queue_size: int = Field(
        default=2048, ge=1, description="Spans waiting for export before new ones are dropped."
    )
    metrics_export_interval_s: float = Field(
        default=60.0, gt=0, description="Time between OTLP metric exports."
    )
    prometheus: bool = Field(
        default=False,
        description="Serve metrics at GET /_geopin/metrics (Prometheus text format).",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Directory where each worker leaves its metrics for the scrape (workers > 1).",
    )
    access_log: bool = Field(
        default=True, description="One JSON line per request on geopin.access."
    )
    access_log_flush_s: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="Longest an access line waits to be written in a batch (0: each at once).",
    )
    log_level: Literal["debug", "info", "warning", "error"] | None = Field(
        default=None, description="Level of geopin's loggers (the top-level log_level if unset)."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Log line format.")
    shutdown_timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Longest wait for the last exports at shutdown."
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("otlp_headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not name or any(c in name for c in " \t\r\n:") or not name.isascii():
                raise ValueError(f"{name!r} is not a header name")
            if any(c in secret.get_secret_value() for c in "\r\n"):
                raise ValueError(f"the value of {name!r} must be a single line")
        return value

    @property
    def exporting(self) -> bool:
        return self.otlp_endpoint is not None

    @property
    def tracing(self) -> bool:
        """Spans are recorded only when they can go somewhere."""
        return self.exporting and self.traces_sample_ratio > 0
