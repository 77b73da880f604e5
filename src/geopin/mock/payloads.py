"""Answer bodies of the mock upstream, in the shapes OpenAI, Azure and Anthropic use.

Pure builders: the ASGI app decides what to answer, these decide how it looks. Every body
names the region that served it, so a test can tell which upstream a request reached.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

_FILLER = (" mock", " answer", " from", " region", " {region}", " for", " {model}")

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    return _json_encoder.encode(value).encode()


def answer_pieces(region: str, model: str, count: int) -> list[str]:
    """The completion text split into ``count`` stream pieces; joined, it is the full answer."""
    pieces = [f"[{region}]"]
    for i in range(1, max(count, 1)):
        if i <= len(_FILLER):
            pieces.append(_FILLER[i - 1].format(region=region, model=model))
        else:
            pieces.append(f" w{i}")
    return pieces


def count_tokens(value: Any) -> int:
    """A deterministic stand-in for a tokenizer: one token per whitespace-separated word."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_tokens(item) for item in value)
    if isinstance(value, dict):
        # Message objects and content parts: count what a model would read.
        return count_tokens(value.get("content")) + count_tokens(value.get("text"))
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    tokens = count_tokens(body.get("messages")) + count_tokens(body.get("prompt"))
    tokens += count_tokens(body.get("system"))
    return max(tokens, 1)


def openai_error(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_error(message: str, type_: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stamp(region: str, ident: str, model: str, object_: str) -> dict[str, Any]:
    return {
        "id": ident,
        "object": object_,
        "created": int(time.time()),
        "model": model,
        "region": region,
        "system_fingerprint": f"fp_mock_{region}",
    }


def chat_completion(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> dict:
    text = "".join(pieces)
    answer = _stamp(region, ident, model, "chat.completion")
    answer["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    answer["usage"] = _usage(prompt_tokens(body), len(pieces))
    return answer


def chat_chunks(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> list[bytes]:
    """Server-sent events of a streamed chat completion, ``[DONE]`` included."""
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = _stamp(region, ident, model, "chat.completion.chunk")
    if with_usage:
        base["usage"] = None

    def chunk(delta: dict, finish: str | None) -> bytes:
        event = dict(base)
        event["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return _sse(event)

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events.extend(chunk({"content": piece}, None) for piece in pieces)
    events.append(chunk({}, "stop"))
    if with_usage:
        final = dict(base)
        final["choices"] = []
        final["usage"] = _usage(prompt_tokens(body), len(pieces))
        events.append(_sse(final))
    events.append(b"data: [DONE]\n\n")
    return events


def text_completion(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> dict:
    answer = _stamp(region, ident, model, "text_completion")
    answer["choices"] = [
        {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    answer["usage"] = _usage(prompt_tokens(body), len(pieces))
    return answer


def text_chunks(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> list[bytes]:
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = _stamp(region, ident, model, "text_completion")

    def chunk(text: str, finish: str | None) -> bytes:
        event = dict(base)
        event["choices"] = [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]
        return _sse(event)

    events = [chunk(piece, None) for piece in pieces]
    events.append(chunk("", "stop"))
    if with_usage:
        final = dict(base)
        final["choices"] = []
        final["usage"] = _usage(prompt_tokens(body), len(pieces))
        events.append(_sse(final))
    events.append(b"data: [DONE]\n\n")
    return events


def embeddings(region: str, model: str, inputs: list[Any], dimensions: int) -> dict:
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(region, item, dimensions)}
        for i, item in enumerate(inputs)
    ]
    tokens = max(count_tokens([str(item) for item in inputs]), 1)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "region": region,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(region: str, item: Any, dimensions: int) -> list[float]:
    # Deterministic per (region, input), so a test can tell two regions' answers apart.
    digest = hashlib.shake_128(f"{region}\0{item}".encode()).digest(dimensions)
    return [round(byte / 127.5 - 1.0, 6) for byte in digest]


def model_list(region: str, models: tuple[str, ...]) -> dict:
    return {
        "object": "list",
        "region": region,
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": f"mock-{region}"}
            for name in models
        ],
    }


def response(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> dict:
    """A completed Responses API object with one assistant message."""
    prompt = max(count_tokens(body.get("input")) + count_tokens(body.get("instructions")), 1)
    text = {"type": "output_text", "text": "".join(pieces), "annotations": []}
    message = {
        "type": "message",
        "id": "msg_" + ident.removeprefix("resp_"),
        "status": "completed",
        "role": "assistant",
        "content": [text],
    }
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "region": region,
        "output": [message],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": len(pieces),
            "total_tokens": prompt + len(pieces),
        },
    }


def file_object(region: str, ident: str, filename: str, purpose: str, size: int) -> dict:
    return {
        "id": ident,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "region": region,
    }


def object_list(region: str, objects: list[dict]) -> dict:
    return {"object": "list", "data": objects, "has_more": False, "region": region}


def deleted(region: str, ident: str, object_: str) -> dict:
    return {"id": ident, "object": object_, "deleted": True, "region": region}


def anthropic_message(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> dict:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "region": region,
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens(body), "output_tokens": len(pieces)},
    }


def anthropic_events(region: str, ident: str, model: str, body: dict, pieces: list[str]) -> list:
    """The event sequence of a streamed Anthropic message (no ``[DONE]``: that is OpenAI's)."""
    start = anthropic_message(region, ident, model, body, [])
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = {"input_tokens": prompt_tokens(body), "output_tokens": 1}
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _event("ping", {"type": "ping"}),
    ]
    events.extend(
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
        for piece in pieces
    )
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
        )
    )
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def _sse(event: dict) -> bytes:
    return b"data: " + dumps(event) + b"\n\n"


def _event(name: str, event: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(event) + b"\n\n"
