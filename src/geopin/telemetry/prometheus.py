"""Prometheus text exposition (format 0.0.4) of the SDK's metrics, for ``GET /_geopin/metrics``.

A pull-only MetricReader collects on demand; the rendering is written here rather than taken
from the Prometheus client library, whose global registry would tie every Telemetry in a
process (and every test) to one set of series.

Names are translated the way OpenTelemetry's Prometheus compatibility rules describe:
dots become underscores, the unit becomes a suffix (``s`` -> ``_seconds``, ``By`` ->
``_bytes``; annotations in braces such as ``{request}`` are dropped), and monotonic sums get
``_total``.

Several worker processes each have their own metrics, and a scrape reaches only one of them.
With a shared ``metrics_dir`` every worker leaves a snapshot of its series there (at most every
``snapshot_interval_s``) and the worker that answers a scrape merges its own live series with
its siblings' snapshots, each series labelled ``worker="<pid>"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


@dataclass
class Family:
    """One metric family: its samples are (name suffix, labels, value)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class PrometheusReader(MetricReader):
    """Collects on scrape only (cumulative, as Prometheus expects)."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality=None)
        self._lock = threading.Lock()
        self._data: MetricsData | None = None

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._data = metrics_data

    def families(self) -> list[Family]:
        with self._lock:
            self._data = None
            self.collect()
            data, self._data = self._data, None
        return families_of(data) if data is not None else []

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def families_of(data: MetricsData) -> list[Family]:
    out: dict[str, Family] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                family = _family(
                    metric.name, metric.unit or "", metric.description or "", metric.data
                )
                if family is None:
                    continue
                existing = out.get(family.name)
                if existing is None:
                    out[family.name] = family
                else:
                    existing.samples.extend(family.samples)
    return list(out.values())


def _family(name: str, unit: str, description: str, data: Any) -> Family | None:
    base = metric_name(name, unit)
    if isinstance(data, Sum):
        if data.aggregation_temporality is not AggregationTemporality.CUMULATIVE:
            return None  # a delta sum means nothing to Prometheus
        if data.is_monotonic:
            return _number_family(base + "_total", "counter", description, data.data_points)
        return _number_family(base, "gauge", description, data.data_points)
    if isinstance(data, Gauge):
        return _number_family(base, "gauge", description, data.data_points)
    if isinstance(data, Histogram):
        return _histogram_family(base, description, data.data_points)
    return None  # exponential histograms are not configured


def _number_family(
    name: str, kind: str, description: str, points: Sequence[NumberDataPoint]
) -> Family:
    family = Family(name, kind, description)
    for point in points:
        family.samples.append(("", _labels(point.attributes), float(point.value)))
    return family


def _histogram_family(name: str, description: str, points: Sequence[HistogramDataPoint]) -> Family:
    family = Family(name, "histogram", description)
    for point in points:
        labels = _labels(point.attributes)
        cumulative = 0
        # bucket_counts has one more entry than explicit_bounds: the overflow, i.e. +Inf.
        for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
            cumulative += count
            family.samples.append(("_bucket", {**labels, "le": _number(bound)}, cumulative))
        family.samples.append(("_bucket", {**labels, "le": "+Inf"}, float(point.count)))
        family.samples.append(("_sum", labels, float(point.sum)))
        family.samples.append(("_count", labels, float(point.count)))
    return family


def metric_name(name: str, unit: str) -> str:
    base = _INVALID_NAME.sub("_", name)
    if base[:1].isdigit():
        base = "_" + base
    suffix = _UNIT_SUFFIX.get(unit, "" if unit.startswith("{") else _INVALID_NAME.sub("_", unit))
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return base


def _labels(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    out = {}
    for key, value in (attributes or {}).items():
        label = _INVALID_LABEL.sub("_", key)
        if label[:1].isdigit():
            label = "_" + label
        out[label] = _label_value(value)
    return out


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, Sequence):
        return json.dumps([_label_value(v) for v in value])
    return str(value)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families``, grouped by family as the format requires."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            lines.append(
                f"{family.name}{suffix}{{{text}}} {_number(value)}"
                if text
                else f"{family.name}{suffix} {_number(value)}"
            )
    return "\n".join(lines) + "\n" if lines else ""


# -- several workers ---------------------------------------------------------------------------


class WorkerSnapshots:
    """Each worker's series in ``directory/<pid>.json``, merged on scrape.

    A snapshot older than three intervals belongs to a worker that died without cleaning up:
    it is skipped and removed, so the series of dead workers disappear from the scrape.
    """

    def __init__(self, directory: Path, reader: PrometheusReader, interval_s: float = 5.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.reader = reader
        self.interval_s = interval_s
        self.worker = str(os.getpid())
        self._path = self.directory / f"{self.worker}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="geopin-metrics-snapshot", daemon=True
        )
        self._thread.start()

    def write(self, families: Sequence[Family] | None = None) -> None:
        """Leave this worker's current series for its siblings (atomically replaced)."""
        families = self.reader.families() if families is None else families
        payload = [[f.name, f.kind, f.help, f.samples] for f in families]
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(temporary, self._path)

    def render(self) -> str:
        """This worker's live series and every live sibling's snapshot."""
        own = self.reader.families()
        try:
            self.write(own)  # a scrape also refreshes what the siblings will show
        except OSError as exc:
            log.warning("cannot write metrics snapshot %s: %s", self._path, exc)
        merged: dict[str, Family] = {}
        _merge(merged, own, self.worker)
        for worker, families in self._siblings():
            _merge(merged, families, worker)
        return render(merged.values())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        try:
            self._path.unlink(missing_ok=True)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
            except Exception as exc:  # never let the snapshot thread die
                log.warning("cannot write metrics snapshot %s: %s", self._path, exc)

    def _siblings(self) -> Iterable[tuple[str, list[Family]]]:
        stale_before = time.time() - 3 * self.interval_s
        for path in sorted(self.directory.glob("*.json")):
            worker = path.stem
            if worker == self.worker:
                continue
            try:
                if path.stat().st_mtime < stale_before:
                    path.unlink(missing_ok=True)
                    continue
                payload = json.loads(path.read_text(encoding="utf-8"))
                families = [
                    Family(n, k, h, [(s, dict(lb), v) for s, lb, v in samples])
                    for n, k, h, samples in payload
                ]
            except (OSError, ValueError, TypeError) as exc:
                log.debug("skipping metrics snapshot %s: %s", path, exc)
                continue
            yield worker, families


def _merge(into: dict[str, Family], families: Iterable[Family], worker: str) -> None:
    for family in families:
        target = into.get(family.name)
        if target is None:
            target = into[family.name] = Family(family.name, family.kind, family.help)
        elif target.kind != family.kind:
            continue  # a worker of another version; never mix types in one family
        target.samples.extend(
            (suffix, {"worker": worker, **labels}, value)
            for suffix, labels, value in family.samples
        )
