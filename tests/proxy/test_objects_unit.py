"""What the router learns from an answer about the object it made, and how it finds it again."""

from __future__ import annotations

import json

import pytest

from geopin.proxy.objects import ObjectHomes, made_object, named_objects
from geopin.proxy.usage import HEAD, UsageTap


@pytest.mark.parametrize(
    ("answer", "stored", "expected"),
    [
        ({"id": "resp_67ccd2bed1ec8190", "object": "response"}, False, "resp_67ccd2bed1ec8190"),
        ({"id": "file-abc123", "object": "file"}, False, "file-abc123"),
        ({"id": "batch_abc123", "object": "batch"}, False, "batch_abc123"),
        ({"id": "msgbatch_01HkcTjaV5u", "type": "message_batch"}, False, "msgbatch_01HkcTjaV5u"),
        ({"id": "chatcmpl-abc123", "object": "chat.completion"}, False, None),  # not stored
        ({"id": "chatcmpl-abc123", "object": "chat.completion"}, True, "chatcmpl-abc123"),
        ({"id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message"}, False, None),  # not kept
        ({"type": "response.created", "response": {"id": "resp_1234567", "object": "response"}},
         False, "resp_1234567"),
        ({"id": "completions", "object": "file"}, False, None),  # not an upstream's id
        ({"id": "file-" + "x" * 300, "object": "file"}, False, None),
        ({"id": "file-a/../b", "object": "file"}, False, None),
        ({"id": 7, "object": "file"}, False, None),
        (["file-abc123"], False, None),
        (None, False, None),
    ],
)  # fmt: skip
def test_made_object(answer, stored, expected):
    assert made_object(answer, stored_completion=stored) == expected


def test_named_objects_are_the_path_after_the_collection_and_previous_response_id():
    assert named_objects("/responses/resp_1/input_items", None) == ["resp_1", "input_items"]
    assert named_objects("/files/file-123/content", {"x": 1}) == ["file-123"]
    assert named_objects("/responses", {"previous_response_id": "resp_0"}) == ["resp_0"]
    assert named_objects("/chat/completions", {"previous_response_id": 3}) == []
    assert named_objects("/files", None) == []


def test_homes_are_per_tenant_bounded_and_used_ones_stay():
    homes = ObjectHomes(capacity=3)
    homes.learn("t1", "resp_a", "eu-fr")
    homes.learn("t1", "resp_b", "eu-se")
    homes.learn("t2", "resp_c", "us")
    assert homes.find("t2", ["resp_a"]) is None  # another tenant's
    assert homes.find("t1", ["nope", "resp_a"]) == ("resp_a", "eu-fr")  # used: now the newest
    homes.learn(None, "file-d", "eu-se")  # over capacity: the least recently used goes
    assert len(homes) == 3 and homes.find("t1", ["resp_b"]) is None
    assert homes.find("t1", ["resp_a"]) == ("resp_a", "eu-fr")
    assert homes.find(None, ["file-d"]) == ("file-d", "eu-se")


def _sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def test_a_stream_names_what_it_makes_in_its_first_event():
    created = {"type": "response.created", "response": {"id": "resp_9876543", "object": "response"}}
    filler = {"type": "response.output_text.delta", "delta": "x" * 2000}
    done = {"type": "response.completed", "response": {"usage": {"input_tokens": 3}}}
    stream = _sse(created, *([filler] * 20), done)
    tap = UsageTap(b"text/event-stream", None)
    for start in range(0, len(stream), 700):  # in pieces, as it arrives
        tap.feed(stream[start : start + 700])
    assert (tap.usage(), tap.made()) == ({"input_tokens": 3}, "resp_9876543")


def test_a_first_event_larger_than_the_head_names_nothing():
    created = {"type": "response.created", "response": {"id": "resp_9876543", "object": "response",
               "instructions": "x" * HEAD}}  # fmt: skip
    tap = UsageTap(b"text/event-stream", None)
    tap.feed(_sse(created))
    assert (tap.usage(), tap.made()) == (None, None)


def test_a_json_answer_names_what_it_makes():
    body = json.dumps({"id": "file-abc123", "object": "file", "bytes": 3}).encode()
    tap = UsageTap(b"application/json", len(body))
    tap.feed(body)
    assert (tap.usage(), tap.made()) == (None, "file-abc123")
