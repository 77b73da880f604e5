"""What one proxied request leaves for its span, its metrics and its access-log line."""

from __future__ import annotations

from typing import Any

from geopin.geo.location import Location
from geopin.telemetry.tracing import RequestTrace


class Exchange:
    """One request's facts for its span, metrics and access-log line, filled in as it goes."""

    __slots__ = (
        "trace",
        "status",
        "action",
        "decision_id",
        "location",
        "client_ip",
        "tenant",
        "endpoint",
        "processing_country",
        "failovers",
        "bytes_in",
        "bytes_out",
        "trace_id",
        "object_id",
    )

    def __init__(self, trace: RequestTrace) -> None:
        self.trace = trace
        self.status = 500  # until something is answered
        self.action = "error"  # refused before the policy decided
        self.decision_id: str | None = None
        self.location: Location | None = None
        self.client_ip: Any = None  # only its network prefix is ever logged
        self.tenant: str | None = None
        self.endpoint: str | None = None
        self.processing_country: str | None = None
        self.failovers: int | None = None
        self.bytes_in: int | None = None
        self.bytes_out: int | None = None
        self.trace_id: str | None = None
        self.object_id: str | None = None  # the upstream object it made or names, for the trail
