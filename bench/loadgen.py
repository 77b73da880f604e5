"""A lean HTTP/1.1 load generator: raw asyncio, keep-alive, one connection per client.

It has to stay far from being the bottleneck when measuring a proxy that adds fractions of
a millisecond, so it sends fixed request bytes and parses only what timing needs: the
status line, Content-Length or chunked framing, and the time of the first body byte.

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions -c 8 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
}
_TAIL = 64
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(6)


class ProtocolError(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 response."""


@dataclass
class Response:
    status: int
    body_bytes: int
    first_byte_at: float | None  # when the first body byte arrived (None: empty body)
    done_at: float
    keep_alive: bool
    tail: bytes  # the last bytes of the body, to check e.g. that a stream ended in [DONE]
    headers: dict[bytes, bytes] | None = None


class ResponseParser:
    """Incremental response parser: ``feed`` bytes as they come, get completed responses.

    Several responses in one feed and one response split over many feeds are both normal.
    """

    def __init__(self, keep_headers: bool = False) -> None:
        self._buffer = b""
        self._keep_headers = keep_headers
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._status = 0
        self._remaining = 0
        self._body_bytes = 0
        self._first_byte_at: float | None = None
        self._keep_alive = True
        self._tail = b""
        self._headers: dict[bytes, bytes] | None = None

    @property
    def idle(self) -> bool:
        """No response is partly parsed."""
        return self._state == _HEAD and not self._buffer

    def feed(self, data: bytes, now: float) -> list[Response]:
        done: list[Response] = []
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        while buffer:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    self._buffer = buffer
                    break
                head, buffer = buffer[:end], buffer[end + 4 :]
                self._parse_head(head)
                if self._state == _HEAD:  # no body at all
                    done.append(self._finish(now))
            elif state == _LENGTH or state == _UNTIL_CLOSE:
                take = len(buffer) if state == _UNTIL_CLOSE else min(self._remaining, len(buffer))
                self._body(buffer[:take], now)
                buffer = buffer[take:]
                self._remaining -= take
                if state == _LENGTH and not self._remaining:
                    done.append(self._finish(now))
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    self._buffer = buffer
                    break
                line, buffer = buffer[:end], buffer[end + 2 :]
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size:
                    self._state, self._remaining = _CHUNK_DATA, size
                else:
                    self._state = _TRAILERS
            elif state == _CHUNK_DATA:
                if self._remaining:
                    take = min(self._remaining, len(buffer))
                    self._body(buffer[:take], now)
                    buffer = buffer[take:]
                    self._remaining -= take
                    continue
                if len(buffer) < 2:
                    self._buffer = buffer
                    break
                if buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                buffer = buffer[2:]
                self._state = _CHUNK_SIZE
            else:  # _TRAILERS: lines until an empty one
                end = buffer.find(b"\r\n")
                if end < 0:
                    self._buffer = buffer
                    break
                line, buffer = buffer[:end], buffer[end + 2 :]
                if not line:
                    done.append(self._finish(now))
        return done

    def feed_eof(self, now: float) -> Response | None:
        """The connection closed: completes a close-delimited body, else fails a partial one."""
        if self._state == _UNTIL_CLOSE:
            return self._finish(now)
        if not self.idle:
            raise ProtocolError("connection closed in the middle of a response")
        return None

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {lines[0][:60]!r}")
        try:
            self._status = int(parts[1])
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        self._keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:60]!r}")
            name = name.strip().lower()
            value = value.strip()
            if self._keep_headers:
                headers[name] = value
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self._keep_alive = value.lower() != b"close"
        self._headers = headers if self._keep_headers else None
        if 100 <= self._status < 200:
            raise ProtocolError("interim 1xx responses are not expected")
        if self._status in (204, 304):
            self._state = _HEAD
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._state, self._remaining = (_LENGTH, length) if length else (_HEAD, 0)
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False

    def _body(self, piece: bytes, now: float) -> None:
        if not piece:
            return
        if self._first_byte_at is None:
            self._first_byte_at = now
        self._body_bytes += len(piece)
        self._tail = (self._tail + piece)[-_TAIL:]

    def _finish(self, now: float) -> Response:
        response = Response(
            self._status,
            self._body_bytes,
            self._first_byte_at,
            now,
            self._keep_alive,
            self._tail,
            self._headers,
        )
        self._reset()
        return response


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = ResponseParser()
        self._waiter: asyncio.Future[Response] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._parser.feed(data, time.perf_counter())
        except ProtocolError as exc:
            self._fail(exc)
            return
        if responses and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(responses[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            last = self._parser.feed_eof(time.perf_counter())
        except ProtocolError as error:
            self._fail(error)
            return
        if self._waiter is not None and not self._waiter.done():
            if last is not None:
                self._waiter.set_result(last)
            else:
                self._waiter.set_exception(ConnectionError(exc or "connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter


@dataclass
class Result:
    """What one load run measured; times in seconds."""

    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict:
        return {
            "requests": self.ok,
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "elapsed_s": round(self.elapsed, 4),
            "rps": round(self.rps, 1),
            "p50_ms": _ms(percentile(self.latencies, 50)),
            "p90_ms": _ms(percentile(self.latencies, 90)),
            "p99_ms": _ms(percentile(self.latencies, 99)),
            "ttfb_p50_ms": _ms(percentile(self.ttfbs, 50)),
            "ttfb_p99_ms": _ms(percentile(self.ttfbs, 99)),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 4)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[min(int(rank), len(ordered)) - 1]


def build_request(
    url: str, body: bytes | None = None, method: str = "POST", headers: dict | None = None
) -> bytes:
    """The exact bytes sent for every request of a run."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def run(
    url: str,
    request: bytes,
    *,
    concurrency: int = 1,
    requests: int = 10_000,
    duration: float = 5.0,
    timeout: float = 30.0,
    expect_tail: bytes | None = None,
) -> Result:
    """Send ``request`` over ``concurrency`` keep-alive connections until ``requests`` have
    been sent or ``duration`` seconds have passed, whichever comes first."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = Result()
    budget = [requests]
    start = time.perf_counter()
    stop_at = start + duration
    last_done = [start]

    async def client() -> None:
        connection: _Connection | None = None
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            try:
                if connection is None or connection.closed:
                    _, connection = await loop.create_connection(_Connection, host, port)
                sent_at = time.perf_counter()
                response = await connection.send(request)
            except (OSError, ProtocolError) as exc:
                result.errors[type(exc).__name__] += 1
                if connection is not None and connection.transport is not None:
                    connection.transport.abort()
                connection = None
                await asyncio.sleep(0.01)  # a refused connect must not spin
                continue
            result.statuses[response.status] += 1
            last_done[0] = response.done_at
            if response.status >= 400:
                result.errors[f"http_{response.status}"] += 1
            elif expect_tail is not None and not response.tail.endswith(expect_tail):
                result.errors["bad_tail"] += 1
            else:
                result.latencies.append(response.done_at - sent_at)
                if response.first_byte_at is not None:
                    result.ttfbs.append(response.first_byte_at - sent_at)
            if not response.keep_alive and connection.transport is not None:
                connection.transport.close()
                connection = None
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=duration + timeout)
    for task in pending:  # a hung server: stop by ourselves, count the stuck requests
        task.cancel()
        result.errors["timeout"] += 1
    if pending:
        await asyncio.wait(pending)
    result.elapsed = last_done[0] - start
    return result


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_sync(url: str, request: bytes, **options) -> Result:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run(url, request, **options))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-n", "--requests", type=int, default=100_000)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true", help="ask for a streamed answer")
    parser.add_argument("--get", action="store_true", help="send GET without a body")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to a core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        import os

        os.sched_setaffinity(0, {args.cpu})
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {name.strip(): value.strip() for name, value in headers.items()}
    if args.get:
        request = build_request(args.url, None, "GET", headers)
    else:
        body = dict(DEFAULT_BODY, stream=True) if args.stream else DEFAULT_BODY
        request = build_request(args.url, json.dumps(body).encode(), "POST", headers)
    cpu_before = time.process_time()
    result = run_sync(
        args.url,
        request,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration,
        expect_tail=b"data: [DONE]\n\n" if args.stream else None,
    )
    summary = result.summary()
    cpu = time.process_time() - cpu_before
    total = result.ok + result.error_count
    summary["loadgen_cpu_s"] = round(cpu, 3)
    summary["loadgen_cpu_us_per_request"] = round(cpu / total * 1e6, 1) if total else None
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
