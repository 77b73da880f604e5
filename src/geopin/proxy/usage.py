"""Token usage an upstream reported, for the outcome record, and the object it made.

Read from what passed through anyway: a small JSON body is kept whole, a stream keeps only its
first bytes (the event naming what it makes) and its tail (the usage arrives in the last
events). Parsed after the response has gone to the client: the object at once (the next call
may name it), the usage in the router's next idle moment (``geopin.proxy.later``).
"""

from __future__ import annotations

import json
from typing import Any

from geopin.audit.canonical import MAX_SAFE_INTEGER
from geopin.proxy.objects import first_event, made_object

KEEP_WHOLE = 256 * 1024  # JSON bodies up to this size are kept to read their usage
TAIL = 8 * 1024  # bytes of a stream's end kept to find its usage
HEAD = 4 * 1024  # bytes of a stream's start kept to find the object it makes


class UsageTap:
    """Fed every chunk of a response; keeps what :meth:`usage` needs and no more."""

    __slots__ = ("_stream", "_parts", "_size", "_head", "_answer", "bytes_out")

    def __init__(self, content_type: bytes, content_length: int | None) -> None:
        self._stream = content_type.startswith(b"text/event-stream")
        json_body = content_type.startswith(b"application/json")
        whole = json_body and content_length is not None and content_length <= KEEP_WHOLE
        self._parts: list[bytes] | None = [] if (self._stream or whole) else None
        self._size = 0
        self._head = b""
        self._answer: Any = _UNREAD  # a JSON body, parsed once
        self.bytes_out = 0

    def feed(self, chunk: bytes) -> None:
        if self._stream and len(self._head) < HEAD:
            self._head += chunk[: HEAD - len(self._head)]
        self.bytes_out += len(chunk)
        parts = self._parts
        if parts is None:
            return
        parts.append(chunk)
        self._size += len(chunk)
        if self._stream and self._size > 2 * TAIL:
            tail = b"".join(parts)[-TAIL:]
            parts[:] = [tail]
            self._size = len(tail)

    def made(self, *, stored_completion: bool = False) -> str | None:
        """The id of the object the upstream made and keeps (``objects.made_object``), None
        when the answer does not say. A stream says it in its first event."""
        if not self._parts:
            return None
        if self._stream:
            return made_object(first_event(self._head), stored_completion=stored_completion)
        return made_object(self._json(), stored_completion=stored_completion)

    def usage(self) -> dict[str, int] | None:
        """The token usage the upstream reported, None when the answer does not say."""
        if not self._parts:
            return None
        if not self._stream:
            return _usage_of(self._json())
        found = None
        for line in b"".join(self._parts).split(b"\n"):
            if line.startswith(b"data:") and b"usage" in line:
                found = _usage_of(_loads(line[5:].strip())) or found
        return found

    def _json(self) -> Any:
        if self._answer is _UNREAD:
            self._answer = _loads(b"".join(self._parts or ()))
        return self._answer


_UNREAD = object()


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _usage_of(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    usage = value.get("usage")
    if not isinstance(usage, dict):
        # Anthropic's message_start event; a Responses stream's response.completed.
        inner = value.get("message", value.get("response"))
        usage = inner.get("usage") if isinstance(inner, dict) else None
    if not isinstance(usage, dict):
        return None
    # Counts only, and only what a record can hold: an upstream's odd field is left out, never
    # allowed to make the outcome record unwritable.
    counts = {
        k: v
        for k, v in usage.items()
        if type(v) is int and 0 <= v <= MAX_SAFE_INTEGER and len(k) <= 64
    }
    return counts or None
