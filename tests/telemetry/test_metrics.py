from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopin.routing.health import HealthBoard
from geopin.telemetry import Metrics
from geopin.telemetry.metrics import INSTRUMENTS, country_code


def _attrs(points):
    return [dict(p.attributes or {}) for p in points]


def test_request_counts_and_duration(captured):
    metrics = captured.telemetry.metrics
    for _ in range(3):
        metrics.request(
            action="route",
            country="de",
            processing_country="FR",
            status=200,
            duration_s=0.2,
            route="/v1/chat/completions",
        )
    metrics.request(
        action="deny", country="CN", processing_country=None, status=451, duration_s=0.001
    )
    counts = {
        (
            a["geopin.action"],
            a["geopin.client.country"],
            a["geopin.processing.country"],
            a["http.response.status_code"],
        ): p.value
        for p in captured.points("geopin.requests")
        for a in [dict(p.attributes)]
    }
    assert counts == {("route", "DE", "FR", 200): 3, ("deny", "CN", "unknown", 451): 1}
    durations = captured.points("http.server.request.duration")
    by_status = {p.attributes["http.response.status_code"]: p for p in durations}
    assert by_status[200].count == 3
    assert by_status[200].sum == pytest.approx(0.6)
    assert by_status[200].attributes["http.route"] == "/v1/chat/completions"
    assert "http.route" not in by_status[451].attributes


def test_histograms_use_the_advised_buckets(captured):
    metrics = captured.telemetry.metrics
    metrics.request(
        action="route", country="DE", processing_country="DE", status=200, duration_s=0.02
    )
    metrics.model_operation(
        operation="chat",
        provider="openai",
        model="gpt-4o",
        endpoint="eu-1",
        duration_s=1.0,
        input_tokens=10,
        output_tokens=20,
    )
    (http,) = captured.points("http.server.request.duration")
    assert tuple(http.explicit_bounds) == (
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        0.75,
        1,
        2.5,
        5,
        7.5,
        10,
    )
    tokens = captured.points("gen_ai.client.token.usage")
    assert tuple(tokens[0].explicit_bounds)[:3] == (1, 4, 16)
    assert {p.attributes["gen_ai.token.type"]: p.sum for p in tokens} == {"input": 10, "output": 20}


def test_attribute_values_stay_bounded(captured):
    metrics = captured.telemetry.metrics
    metrics.request(
        action="route",
        country="203.0.113.7",
        processing_country="Germany",
        status=200,
        duration_s=0.1,
        method="BREW",
    )
    metrics.upstream_error(endpoint="eu-1", kind="connection reset by 10.0.0.1")
    (request,) = captured.points("geopin.requests")
    assert request.attributes["geopin.client.country"] == "unknown"
    assert request.attributes["geopin.processing.country"] == "unknown"
    (http,) = captured.points("http.server.request.duration")
    assert http.attributes["http.request.method"] == "_OTHER"
    (error,) = captured.points("geopin.upstream.errors")
    assert dict(error.attributes) == {"geopin.endpoint": "eu-1", "error.type": "other"}


@given(st.one_of(st.none(), st.text(max_size=6)))
def test_country_code_is_two_letters_or_unknown(value):
    code = country_code(value)
    assert code == "unknown" or (len(code) == 2 and code.isalpha() and code.isupper())


def test_upstream_failover_ttfb_reload_checkpoint(captured):
    metrics = captured.telemetry.metrics
    metrics.upstream(endpoint="eu-1", status=None, duration_s=5.0)
    metrics.upstream(endpoint="eu-2", status=200, duration_s=0.3)
    metrics.upstream_error(endpoint="eu-1", kind="timeout")
    metrics.failover(endpoint="eu-1")
    metrics.time_to_first_byte(endpoint="eu-2", seconds=0.4)
    metrics.policy_reload(ok=True)
    metrics.policy_reload(ok=False, what="geoip")
    metrics.checkpoint(ok=False)
    upstream = _attrs(captured.points("geopin.upstream.duration"))
    assert sorted(upstream, key=lambda a: a["geopin.endpoint"]) == [
        {"geopin.endpoint": "eu-1"},
        {"geopin.endpoint": "eu-2", "http.response.status_code": 200},
    ]
    points = captured.reader.get_metrics_data()
    names = {
        m.name for rm in points.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert {
        "geopin.failovers",
        "geopin.stream.time_to_first_byte",
        "geopin.policy.reloads",
        "geopin.audit.checkpoints",
        "geopin.upstream.errors",
    } <= names
    reloads = {
        (a["result"], a["geopin.reload.kind"])
        for a in _attrs(captured.points("geopin.policy.reloads"))
    }
    assert reloads == {("success", "policy"), ("failure", "geoip")}


def test_model_operation_error_records_no_tokens(captured):
    captured.telemetry.metrics.model_operation(
        operation="chat",
        provider="anthropic",
        model="claude",
        endpoint="eu-1",
        duration_s=2.0,
        input_tokens=5,
        error_type="timeout",
    )
    (duration,) = captured.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "timeout"
    assert captured.points("gen_ai.client.token.usage") == []


def test_breaker_states_from_a_real_health_snapshot(captured):
    board = HealthBoard()
    for _ in range(board.config.failure_threshold):
        board.observe_failure("eu-1", "connect refused", now=100.0)
    board.observe_success("eu-2", 0.1, now=100.0)
    snapshot = board.snapshot(100.0)
    captured.telemetry.metrics.watch_breakers(lambda: snapshot)
    states = {
        p.attributes["geopin.endpoint"]: p.value
        for p in captured.points("geopin.endpoint.breaker_state")
    }
    assert states == {"eu-1": 2, "eu-2": 0}


def test_a_failing_source_does_not_break_collection(captured):
    metrics = captured.telemetry.metrics

    def broken():
        raise RuntimeError("board changed during iteration")

    metrics.watch_breakers(broken)
    metrics.watch_audit(queue_depth=lambda: 7, sequencing_lag=lambda: None)
    metrics.failover(endpoint="eu-1")
    assert captured.points("geopin.endpoint.breaker_state") == []
    assert [p.value for p in captured.points("geopin.audit.queue_depth")] == [7]
    assert captured.points("geopin.audit.sequencing_lag") == []
    assert [p.value for p in captured.points("geopin.failovers")] == [1]


def test_objects_known_and_the_object_tables_counts(captured):
    metrics = captured.telemetry.metrics
    metrics.watch_objects(lambda: 3)  # no shared table: only what this process knows
    assert [p.value for p in captured.points("geopin.objects.known")] == [3]
    assert captured.points("geopin.objects.lookups") == []
    stats = {"found": 2, "not_found": 1, "failed": 0, "written": 4, "dropped": 1}
    metrics.watch_objects(lambda: 5, lambda: stats)
    lookups = {p.attributes["result"]: p.value for p in captured.points("geopin.objects.lookups")}
    assert lookups == {"found": 2, "not_found": 1, "failed": 0}
    writes = {p.attributes["result"]: p.value for p in captured.points("geopin.objects.writes")}
    assert writes == {"written": 4, "dropped": 1}
    metrics.watch_objects(lambda: 5, lambda: {})  # a source that breaks: nothing, no error
    assert captured.points("geopin.objects.writes") == []


def test_audit_commits_from_another_thread(captured):
    metrics = captured.telemetry.metrics
    threads = [
        threading.Thread(
            target=lambda: [metrics.audit_commit(duration_s=0.002) for _ in range(250)]
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (commit,) = captured.points("geopin.audit.commit.duration")
    assert commit.count == 1000


def test_disabled_metrics_do_nothing():
    metrics = Metrics(None)
    assert not metrics.enabled
    metrics.request(
        action="route", country="DE", processing_country="DE", status=200, duration_s=0.1
    )
    metrics.upstream(endpoint="e", status=200, duration_s=0.1)
    metrics.audit_commit(duration_s=0.1)
    metrics.watch_breakers(dict)


def test_every_instrument_is_created(captured):
    metrics = captured.telemetry.metrics
    metrics.request(
        action="route", country="DE", processing_country="DE", status=200, duration_s=0.1
    )
    metrics.decision(action="route", duration_s=0.0001)
    metrics.upstream(endpoint="e", status=200, duration_s=0.1)
    metrics.upstream_error(endpoint="e", kind="connect")
    metrics.failover(endpoint="e")
    metrics.time_to_first_byte(endpoint="e", seconds=0.1)
    metrics.model_operation(
        operation="chat",
        provider="openai",
        model="m",
        endpoint="e",
        duration_s=0.1,
        input_tokens=1,
        output_tokens=1,
    )
    metrics.audit_commit(duration_s=0.01)
    metrics.checkpoint(ok=True)
    metrics.policy_reload(ok=True)
    metrics.watch_breakers(lambda: {"e": "half_open"})
    metrics.watch_audit(queue_depth=lambda: 0, sequencing_lag=lambda: 1.5)
    data = captured.reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == set(INSTRUMENTS)
