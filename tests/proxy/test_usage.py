"""The usage tap: token counts read from what passed through, and nothing a record can't hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from geopin.audit.canonical import MAX_SAFE_INTEGER
from geopin.audit.records import encode, outcome_record
from geopin.proxy.usage import TAIL, UsageTap


def _json_tap(body: dict) -> UsageTap:
    data = json.dumps(body).encode()
    tap = UsageTap(b"application/json", len(data))
    tap.feed(data)
    return tap


def test_json_body_usage_is_read():
    tap = _json_tap({"usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    assert tap.usage() == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert tap.bytes_out > 0


def test_stream_usage_comes_from_its_last_events():
    tap = UsageTap(b"text/event-stream", None)
    tap.feed(b'data: {"choices": []}\n\n' * 2000)  # far more than the tail kept
    tap.feed(b'data: {"usage": {"prompt_tokens": 4, "completion_tokens": 9}}\n\ndata: [DONE]\n\n')
    assert tap.usage() == {"prompt_tokens": 4, "completion_tokens": 9}
    assert tap._size <= 2 * TAIL


def test_a_streamed_chat_completion_is_made_only_when_the_call_stores_it():
    chunk = UsageTap(b"text/event-stream", None)
    chunk.feed(b'data: {"id": "chatcmpl-abc123", "object": "chat.completion.chunk"}\n\n')
    assert chunk.made() is None  # a chat completion is kept only when the call asked
    assert chunk.made(stored_completion=True) == "chatcmpl-abc123"


def test_a_json_answer_is_parsed_once_for_its_object_and_its_usage():
    tap = _json_tap({"id": "file-abc123", "object": "file", "usage": {"prompt_tokens": 2}})
    assert tap.made() == "file-abc123"
    tap._parts = [b"not json"]  # what was fed is not parsed again
    assert tap.usage() == {"prompt_tokens": 2}
    assert UsageTap(b"application/json", 0).made() is None  # nothing fed


def test_anthropic_message_start_usage():
    tap = UsageTap(b"text/event-stream; charset=utf-8", None)
    tap.feed(b'event: message_start\ndata: {"message": {"usage": {"input_tokens": 7}}}\n\n')
    assert tap.usage() == {"input_tokens": 7}


def test_odd_counts_are_left_out_and_the_record_stays_writable():
    tap = _json_tap(
        {
            "usage": {
                "prompt_tokens": 3,
                "huge": MAX_SAFE_INTEGER + 1,
                "negative": -1,
                "flag": True,
                "ratio": 0.5,
                "details": {"cached_tokens": 1},
                "k" * 65: 1,
            }
        }
    )
    usage = tap.usage()
    assert usage == {"prompt_tokens": 3}
    record = outcome_record(
        decision_id="dec-1",
        time=datetime.now(UTC),
        endpoint=None,
        attempts=[],
        status=200,
        latency_us=1,
        model="m",
        usage=usage,
    )
    assert b'"usage":{"prompt_tokens":3}' in encode(record)


def test_no_usage_from_bodies_that_are_not_json_or_too_big():
    assert _json_tap({"id": "x"}).usage() is None
    garbage = UsageTap(b"application/json", 5)
    garbage.feed(b"{not json")
    assert garbage.usage() is None
    unknown_length = UsageTap(b"application/json", None)
    unknown_length.feed(b'{"usage": {"prompt_tokens": 1}}')
    assert unknown_length.usage() is None
    assert UsageTap(b"text/plain", 10).usage() is None
