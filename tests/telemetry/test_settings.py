from __future__ import annotations

import pytest
from pydantic import ValidationError

from geopin.telemetry import TelemetrySettings

from .conftest import make_settings


def test_defaults_export_nothing_and_serve_no_scrape():
    settings = TelemetrySettings()
    assert settings.otlp_endpoint is None and not settings.exporting and not settings.tracing
    assert not settings.prometheus and settings.access_log
    assert settings.otlp_protocol == "grpc" and settings.service_name == "geopin"


def test_header_values_are_secret():
    settings = make_settings(otlp_headers={"authorization": "Bearer t0ps3cret"})
    assert "t0ps3cret" not in repr(settings) and "t0ps3cret" not in str(settings.model_dump())
    assert settings.otlp_headers["authorization"].get_secret_value() == "Bearer t0ps3cret"


@pytest.mark.parametrize(
    "overrides",
    [
        {"otlp_endpoint": "collector:4317"},
        {"otlp_protocol": "http/json"},
        {"traces_sample_ratio": 1.5},
        {"metrics_export_interval_s": 0},
        {"otlp_headers": {"bad name": "x"}},
        {"otlp_headers": {"x-token": "a\r\nInjected: 1"}},
        {"tracing": True},  # unknown key
    ],
)
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        make_settings(**overrides)


def test_endpoint_normalised_and_empty_means_none():
    assert make_settings(otlp_endpoint="http://c:4318/").otlp_endpoint == "http://c:4318"
    assert make_settings(otlp_endpoint="").otlp_endpoint is None


def test_frozen():
    with pytest.raises(ValidationError):
        TelemetrySettings().prometheus = False  # type: ignore[misc]
