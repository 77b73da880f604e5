from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

from prometheus_client.parser import text_string_to_metric_families

from geopin.telemetry import Telemetry
from geopin.telemetry.prometheus import Family, metric_name, render

from .conftest import make_settings

# One line of the text format: a comment, or name{labels} value.
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{_LABEL}(,{_LABEL})*\}})? "
    r"(-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)$"
)
_COMMENT = re.compile(
    r"^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* "
    r"(counter|gauge|histogram))$"
)


def _strict_check(text: str) -> None:
    """Every line is well formed, and each family's HELP and TYPE come once, before it."""
    assert text.endswith("\n")
    seen_types: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("#"):
            assert _COMMENT.match(line), line
            if line.startswith("# TYPE "):
                name = line.split()[2]
                assert name not in seen_types, f"{name} declared twice"
                seen_types.add(name)
                current = name
            continue
        assert _SAMPLE.match(line), line
        assert current is not None and line.startswith(current), (current, line)


def _exercise(telemetry: Telemetry) -> None:
    metrics = telemetry.metrics
    for status, duration in ((200, 0.02), (200, 0.3), (503, 1.2)):
        metrics.request(
            action="route",
            country="DE",
            processing_country="FR",
            status=status,
            duration_s=duration,
            route="/v1/chat/completions",
        )
    metrics.request(
        action="deny", country="US", processing_country=None, status=451, duration_s=0.001
    )
    metrics.upstream_error(endpoint="eu-1", kind="timeout")
    metrics.failover(endpoint="eu-1")
    metrics.model_operation(
        operation="chat",
        provider="openai",
        model="gpt-4o",
        endpoint="eu-2",
        duration_s=0.9,
        input_tokens=100,
        output_tokens=250,
    )
    metrics.watch_breakers(lambda: {"eu-1": "open", "eu-2": "closed"})
    metrics.watch_audit(queue_depth=lambda: 4, sequencing_lag=lambda: 0.75)
    table = {"found": 5, "not_found": 2, "failed": 1, "written": 9, "dropped": 0, "queued": 3}
    metrics.watch_objects(lambda: 12, lambda: table)


def _families(text: str):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_rendering_parses_with_the_prometheus_parser():
    telemetry = Telemetry.from_settings(make_settings())
    _exercise(telemetry)
    text = telemetry.render_metrics()
    _strict_check(text)
    families = _families(text)
    # The parser strips _total from counter family names.
    requests = families["geopin_requests"]
    assert requests.type == "counter"
    values = {
        (s.labels["geopin_action"], s.labels["http_response_status_code"]): s.value
        for s in requests.samples
    }
    assert values == {("route", "200"): 2, ("route", "503"): 1, ("deny", "451"): 1}
    assert families["geopin_endpoint_breaker_state"].type == "gauge"
    assert {
        s.labels["geopin_endpoint"]: s.value
        for s in families["geopin_endpoint_breaker_state"].samples
    } == {"eu-1": 2, "eu-2": 0}
    assert families["geopin_audit_queue_depth"].samples[0].value == 4
    assert families["geopin_audit_sequencing_lag_seconds"].samples[0].value == 0.75
    assert "geopin_upstream_errors" in families and "geopin_failovers" in families
    assert families["geopin_objects_known"].samples[0].value == 12
    lookups = families["geopin_objects_lookups"]
    assert lookups.type == "counter"
    assert {s.labels["result"]: s.value for s in lookups.samples if s.name.endswith("_total")} == {
        "found": 5,
        "not_found": 2,
        "failed": 1,
    }
    writes = families["geopin_objects_writes"]
    assert {s.labels["result"]: s.value for s in writes.samples if s.name.endswith("_total")} == {
        "written": 9,
        "dropped": 0,
    }
    telemetry.shutdown()


def test_histograms_are_cumulative_and_complete():
    telemetry = Telemetry.from_settings(make_settings())
    _exercise(telemetry)
    families = _families(telemetry.render_metrics())
    duration = families["http_server_request_duration_seconds"]
    assert duration.type == "histogram"
    series: dict[str, dict[str, float]] = {}
    for sample in duration.samples:
        key = sample.labels["http_response_status_code"]
        name = sample.name.removeprefix("http_server_request_duration_seconds")
        label = sample.labels.get("le", "")
        series.setdefault(key, {})[name + label] = sample.value
    ok = series["200"]
    buckets = [v for k, v in ok.items() if k.startswith("_bucket")]
    assert buckets == sorted(buckets)
    assert ok["_bucket0.025"] == 1 and ok["_bucket0.5"] == 2
    assert ok["_bucket+Inf"] == ok["_count"] == 2
    assert abs(ok["_sum"] - 0.32) < 1e-9
    tokens = families["gen_ai_client_token_usage"]
    sums = {
        s.labels["gen_ai_token_type"]: s.value for s in tokens.samples if s.name.endswith("_sum")
    }
    assert sums == {"input": 100, "output": 250}
    telemetry.shutdown()


def test_label_values_and_help_are_escaped():
    family = Family("x_total", "counter", 'a "help"\nwith a \\ newline')
    family.samples.append(("", {"endpoint": 'eu "1"\\\nx'}, 3))
    text = render([family])
    _strict_check(text)
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.samples[0].labels["endpoint"] == 'eu "1"\\\nx'
    assert parsed.documentation == 'a "help"\nwith a \\ newline'


def test_names_follow_the_compatibility_rules():
    assert (
        metric_name("http.server.request.duration", "s") == "http_server_request_duration_seconds"
    )
    assert metric_name("gen_ai.client.token.usage", "{token}") == "gen_ai_client_token_usage"
    assert metric_name("geopin.requests", "{request}") == "geopin_requests"
    assert metric_name("body.size", "By") == "body_size_bytes"
    assert metric_name("already_seconds", "s") == "already_seconds"


def test_nothing_to_render_when_prometheus_is_off():
    telemetry = Telemetry.from_settings(make_settings(prometheus=False))
    assert not telemetry.serves_metrics
    assert telemetry.render_metrics() == ""
    telemetry.shutdown()


_WORKER = textwrap.dedent(
    """
    import os, sys
    from geopin.telemetry import Telemetry, TelemetrySettings
    t = Telemetry.from_settings(TelemetrySettings(metrics_dir=sys.argv[1], prometheus=True),
                                snapshot_interval_s=30)
    for _ in range(5):
        t.metrics.request(action="route", country="FR", processing_country="FR", status=200,
                          duration_s=0.05)
    t.metrics.watch_breakers(lambda: {"eu-1": "half_open"})
    t._snapshots.write()
    print(os.getpid())
    sys.stdout.flush()
    sys.stdin.read()  # stay alive until the test is done
    t.shutdown()
    """
)


def test_several_workers_are_merged_with_a_worker_label(tmp_path):
    directory = tmp_path / "metrics"
    other = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        other_pid = other.stdout.readline().strip()
        assert other_pid.isdigit()
        telemetry = Telemetry.from_settings(make_settings(metrics_dir=directory))
        telemetry.metrics.request(
            action="deny", country="US", processing_country=None, status=451, duration_s=0.01
        )
        text = telemetry.render_metrics()
        _strict_check(text)
        requests = _families(text)["geopin_requests"]
        by_worker = {
            (s.labels["worker"], s.labels["geopin_action"]): s.value for s in requests.samples
        }
        assert by_worker == {(str(os.getpid()), "deny"): 1, (other_pid, "route"): 5}
        breaker = _families(text)["geopin_endpoint_breaker_state"].samples
        assert [(s.labels["worker"], s.value) for s in breaker] == [(other_pid, 1)]
        # Our own snapshot is there for the siblings, and gone after shutdown.
        own = directory / f"{os.getpid()}.json"
        assert json.loads(own.read_text())
        telemetry.shutdown()
        assert not own.exists()
    finally:
        other.communicate("", timeout=20)
    assert other.returncode == 0
    assert not (directory / f"{other_pid}.json").exists()


def test_a_dead_workers_stale_snapshot_is_dropped(tmp_path):
    directory = tmp_path / "metrics"
    telemetry = Telemetry.from_settings(
        make_settings(metrics_dir=directory), snapshot_interval_s=0.5
    )
    stale = directory / "999999.json"
    stale.write_text(
        json.dumps(
            [["geopin_requests_total", "counter", "h", [["", {"geopin_action": "route"}, 9]]]]
        )
    )
    old = time.time() - 60
    os.utime(stale, (old, old))
    text = telemetry.render_metrics()
    assert 'worker="999999"' not in text
    assert not stale.exists()
    telemetry.shutdown()


def test_a_corrupt_snapshot_is_skipped(tmp_path):
    directory = tmp_path / "metrics"
    telemetry = Telemetry.from_settings(make_settings(metrics_dir=directory))
    (directory / "424242.json").write_text("{not json")
    telemetry.metrics.failover(endpoint="eu-1")
    text = telemetry.render_metrics()
    _strict_check(text)
    assert "424242" not in text and "geopin_failovers_total" in text
    telemetry.shutdown()
