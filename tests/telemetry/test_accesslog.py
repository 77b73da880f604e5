from __future__ import annotations

import io
import json
import logging
import os
import time
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.telemetry import access_log, accesslog, client_prefix, configure_logging

SECRET_KEY = "sk-live-4f9a8b7c6d5e4f3a2b1c"
PROMPT = "my diagnosis is confidential: patient 4471"
CLIENT_IP = "203.0.113.77"
FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "pid",
    "decision_id",
    "trace_id",
    "method",
    "path",
    "action",
    "client_country",
    "client_network",
    "endpoint",
    "processing_country",
    "status",
    "latency_ms",
    "bytes_in",
    "bytes_out",
    "tenant",
    "failovers",
}


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging("info", stream=out)
    return out


def _request_as_received():
    """What a request carries: none of it may reach the log except through access_log()."""
    return {
        "headers": [
            (b"authorization", f"Bearer {SECRET_KEY}".encode()),
            (b"x-forwarded-for", CLIENT_IP.encode()),
        ],
        "body": json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}),
        "client": (CLIENT_IP, 51234),
        "query_string": f"api-key={SECRET_KEY}".encode(),
    }


def _log_one(request) -> None:
    access_log(
        method="POST",
        path="/v1/chat/completions?" + request["query_string"].decode(),
        status=200,
        duration_s=0.1234,
        decision_id="dec_01J",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        action="route",
        client_country="DE",
        client_network=client_prefix(ip_address(request["client"][0])),
        endpoint="eu-1",
        processing_country="FR",
        bytes_in=len(request["body"]),
        bytes_out=2048,
        tenant="acme",
        failovers=0,
    )


def test_one_json_line_per_request(stream):
    _log_one(_request_as_received())
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert set(record) == FIELDS
    assert record["logger"] == "geopin.access"
    assert record["path"] == "/v1/chat/completions"
    assert record["client_network"] == "203.0.113.0/24"
    assert record["latency_ms"] == 123.4
    assert record["status"] == 200 and record["tenant"] == "acme"
    assert record["time"].endswith("+00:00")
    assert record["pid"] == os.getpid()  # which worker answered, with several


def test_no_credential_prompt_or_address_reaches_the_log(stream):
    request = _request_as_received()
    _log_one(request)
    logging.getLogger("geopin.proxy").info("forwarded to %s", "eu-1")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s"', CLIENT_IP, "POST", "/v1?api-key=" + SECRET_KEY
    )
    text = stream.getvalue()
    assert text.count("\n") == 2
    for secret in (SECRET_KEY, PROMPT, "patient", CLIENT_IP, "51234", "Bearer"):
        assert secret not in text


def test_access_log_takes_nothing_it_does_not_name():
    with pytest.raises(TypeError):
        access_log(
            method="GET",
            path="/",
            status=200,
            duration_s=0.0,  # type: ignore[call-arg]
            headers=[(b"authorization", SECRET_KEY.encode())],
        )


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.text(max_size=40))
def test_field_text_cannot_forge_fields_or_lines(text, tenant):
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        access_log(
            method="POST",
            path="/v1/" + text,
            status=200,
            duration_s=0.001,
            tenant=tenant,
            endpoint=text,
        )
    finally:
        configure_logging("info")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert set(record) <= FIELDS
    assert "?" not in record["path"] and len(record["path"]) <= 512
    assert record["tenant"] == tenant[:128] and record["endpoint"] == text[:128]  # as given


def test_client_prefix_truncates_both_families():
    assert client_prefix(ip_address("198.51.100.200")) == "198.51.100.0/24"
    assert client_prefix(ip_address("2001:db8:abcd:12:34::1")) == "2001:db8:abcd::/48"
    assert client_prefix(None) is None


def test_access_log_can_be_switched_off():
    out = io.StringIO()
    configure_logging("info", stream=out, access=False)
    try:
        access_log(method="GET", path="/", status=200, duration_s=0.0)
        logging.getLogger("geopin.router").warning("still logged")
    finally:
        configure_logging("info")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["message"] == "still logged"


def test_level_applies_to_geopin_not_to_the_access_log():
    out = io.StringIO()
    configure_logging("warning", stream=out)
    try:
        logging.getLogger("geopin.router").info("hidden")
        access_log(method="GET", path="/healthz", status=200, duration_s=0.0)
    finally:
        configure_logging("info")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["path"] == "/healthz"


def test_text_format_and_exceptions():
    out = io.StringIO()
    configure_logging("info", json=False, stream=out)
    try:
        access_log(method="GET", path="/x", status=404, duration_s=0.002, tenant="t")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("geopin.router").exception("failed")
    finally:
        configure_logging("info")
    text = out.getvalue()
    assert 'path="/x" status=404' in text and "ValueError: boom" in text


def test_json_exceptions_stay_on_one_line():
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("geopin.router").exception("failed")
    finally:
        configure_logging("info")
    (line,) = out.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_unknown_level_is_refused():
    with pytest.raises(ValueError):
        configure_logging("loud")


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _one(i: int) -> None:
    access_log(method="POST", path="/v1/chat/completions", status=200, duration_s=0.001,
               decision_id=f"dec-{i}")  # fmt: skip


def _wait_for(condition, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


def test_batched_lines_wait_then_arrive_together_within_the_interval():
    out = io.StringIO()
    configure_logging("info", stream=out, access_flush_s=0.3)
    for i in range(5):
        _one(i)
    assert out.getvalue() == ""  # nothing written per request
    waited = _wait_for(lambda: len(_lines(out)) == 5)
    assert waited < 2.0
    assert [line["decision_id"] for line in _lines(out)] == [f"dec-{i}" for i in range(5)]
    # Idle, the timer waits for the next line and starts counting again from it.
    time.sleep(0.4)
    _one(5)
    assert len(_lines(out)) == 5
    _wait_for(lambda: len(_lines(out)) == 6)


def test_a_full_batch_is_written_at_once():
    out = io.StringIO()
    configure_logging("info", stream=out, access_flush_s=60)
    count = 0
    while out.getvalue() == "":
        _one(count)
        count += 1
        assert count < 10_000
    assert len(out.getvalue()) >= accesslog._BATCH_BYTES
    assert len(_lines(out)) == count  # the line that filled it went with the batch


def test_flush_logs_and_close_write_what_waits():
    out = io.StringIO()
    configure_logging("info", stream=out, access_flush_s=60)
    _one(1)
    assert out.getvalue() == ""
    accesslog.flush_logs()
    assert [line["decision_id"] for line in _lines(out)] == ["dec-1"]
    _one(2)
    (batching,) = [
        h for h in logging.getLogger("geopin.access").handlers if h.get_name() == "geopin"
    ]
    batching.close()
    assert [line["decision_id"] for line in _lines(out)] == ["dec-1", "dec-2"]
    _one(3)  # after close, a line is written straight away rather than lost
    assert _lines(out)[-1]["decision_id"] == "dec-3"


def test_reconfiguring_replaces_the_batching_handler_and_writes_what_it_held():
    first = io.StringIO()
    configure_logging("info", stream=first, access_flush_s=60)
    _one(1)
    second = io.StringIO()
    configure_logging("info", stream=second)
    assert [line["decision_id"] for line in _lines(first)] == ["dec-1"]
    _one(2)
    assert [line["decision_id"] for line in _lines(second)] == ["dec-2"]
    names = [h.get_name() for h in logging.getLogger("geopin.access").handlers]
    assert names.count("geopin") == 1  # other code's handlers, if any, are left alone
