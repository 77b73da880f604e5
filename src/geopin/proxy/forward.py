"""A small pooled HTTP/1.1 client for the upstreams: asyncio protocols and httptools parsing.

httpx costs more per request than the whole latency budget of the router (see
``docs/router.md``, "Upstream client"), so the hot path talks to upstreams through this client.
It does exactly what forwarding needs: one request written in one go, the response head, then
the body chunk by chunk as it arrives (server-sent events pass straight through), keep-alive
connections pooled per origin, and back-pressure from a slow client to the upstream socket.

Errors are geopin's own: :class:`UpstreamConnectError` (nothing was answered),
:class:`UpstreamTimeout` and :class:`UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import httptools

from geopin.errors import UpstreamError

_PAUSE_AT = 256 * 1024  # buffered body bytes at which the upstream socket stops being read
_RESUME_AT = 64 * 1024


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached, or closed the connection before answering."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, answer or send the next chunk in time."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's answer is not valid HTTP/1.1."""


class Origin(NamedTuple):  # a tuple: hashed in C, once per request, to find its pool
    scheme: str  # "http" | "https"
    host: str
    port: int


@dataclass(slots=True)
class UpstreamRequest:
    origin: Origin
    method: str
    target: str  # path and query, already encoded
    # Host and Content-Length are added by the client. Neither the headers (the credential)
    # nor the body (the prompt) is ever shown.
    headers: list[tuple[bytes, bytes]] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PoolStats:
    idle: int  # pooled keep-alive connections
    active: int  # connections carrying a request or response now


def _expire(waiter: asyncio.Future, what: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(what))


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.received_any = False
        self.until_close = True  # no Content-Length nor chunked: the body ends with the socket
        self.error: UpstreamError | None = None
        self.keep_alive = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and self.until_close and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete and self.error is None:
            self.error = UpstreamConnectError(
                "the upstream closed the connection"
                + (" mid-response" if self.head_done else " before answering")
            )
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value):
            self.until_close = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self.headers = []
            self.until_close = True
            return
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered >= _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:
            return  # the end of an interim response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- used by the client --------------------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float, what: str) -> None:
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter, what)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)  # no copy of a large body just to write it once

    async def head(self, timeout: float) -> None:
        while not self.head_done and self.error is None:
            await self._wait(timeout, f"no response within {timeout:g}s")
        if self.error is not None and not self.head_done:
            raise self.error

    async def chunk(self, timeout: float) -> bytes | None:
        """The next piece of the body; None at its end."""
        while not self._body:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(timeout, f"no data for {timeout:g}s mid-response")
        data = self._body.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered <= _RESUME_AT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self._body

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """A response whose head has arrived. Read it with :meth:`chunk`; always :meth:`close` it
    (an unfinished response's connection is dropped, a finished one goes back to the pool)."""

    __slots__ = ("status", "headers", "_conn", "_client", "_timeout")

    def __init__(self, conn: _Connection, client: UpstreamClient, timeout: float) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn: _Connection | None = conn
        self._client = client
        self._timeout = timeout

    async def chunk(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None
        data = await conn.chunk(self._timeout)
        if data is None:
            self.close()
        return data

    @property
    def waiting(self) -> bool:
        """Would :meth:`chunk` wait for the upstream now (nothing of the body is here yet)?"""
        conn = self._conn
        return conn is not None and not conn._body and not conn.complete and conn.error is None

    async def read(self, limit: int = 1 << 20) -> bytes:
        """The whole body (for small answers; raises UpstreamProtocolError beyond ``limit``)."""
        parts = []
        size = 0
        while (data := await self.chunk()) is not None:
            size += len(data)
            if size > limit:
                self.close()
                raise UpstreamProtocolError(f"upstream body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def abort(self) -> None:
        """Drop the connection now (the client went away); a pending :meth:`chunk` raises."""
        conn = self._conn
        if conn is not None:
            conn._fail(UpstreamConnectError("aborted: the client went away"))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)


class UpstreamClient:
    """Pooled keep-alive connections per origin. One instance per event loop."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        max_idle_per_origin: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._active: set[_Connection] = set()
        self._closed = False

    async def send(
        self,
        request: UpstreamRequest,
        *,
        read_timeout: float | None = None,
        idle: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send ``request`` and wait for the response head. ``idle``: called once the request
        is written, before the wait (the caller's other work, done while the upstream works)."""
        if self._closed:
            raise UpstreamConnectError("the upstream client is closed")
        timeout = read_timeout if read_timeout is not None else self.read_timeout
        head = _head(request)
        conn = self._checkout(request.origin)
        if conn is not None:
            conn.send(head, request.body)
            if idle is not None:
                idle()
            try:
                await conn.head(timeout)
                return UpstreamResponse(conn, self, timeout)
            except UpstreamConnectError:
                self._discard(conn)
                if conn.received_any:
                    raise
                # A pooled connection the upstream had already closed: nothing reached it,
                # so the request goes once more on a fresh connection.
            except BaseException:
                self._discard(conn)
                raise
        conn = await self._connect(request.origin)
        conn.send(head, request.body)
        if idle is not None:
            idle()
        try:
            await conn.head(timeout)
        except BaseException:
            self._discard(conn)
            raise
        return UpstreamResponse(conn, self, timeout)

    def stats(self) -> PoolStats:
        return PoolStats(sum(len(c) for c in self._idle.values()), len(self._active))

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._active):
            conn.close()
        self._active.clear()

    # -- internals ---------------------------------------------------------------------------

    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self._active.add(conn)
                return conn
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(origin, loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to {origin.host}:{origin.port} took over {self.connect_timeout:g}s"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
                if isinstance(exc, OSError)
                else f"TLS with {origin.host}:{origin.port} failed: {exc}"
            ) from exc
        self._active.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        self._active.discard(conn)
        if self._closed or not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
        else:
            idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        self._active.discard(conn)
        conn.close()


def _head(request: UpstreamRequest) -> bytes:
    origin = request.origin
    default = 443 if origin.scheme == "https" else 80
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    if origin.port != default:
        host = f"{host}:{origin.port}"
    lines = [
        f"{request.method} {request.target} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1"),
        b"content-length: %d\r\n" % len(request.body)
        if request.body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS")
        else b"",
    ]
    lines.extend(name + b": " + value + b"\r\n" for name, value in request.headers)
    lines.append(b"\r\n")
    return b"".join(lines)
