"""The pooled upstream client against small raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio

import pytest

from geopin.proxy.forward import (
    Origin,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeout,
)

from .conftest import raw_server, stop_raw


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def _request(port: int, body: bytes = b"{}") -> UpstreamRequest:
    return UpstreamRequest(Origin("http", "127.0.0.1", port), "POST", "/v1/x", [], body)


def test_keep_alive_connections_are_reused_and_bodies_framed_three_ways():
    connections = []
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ]

    async def handler(reader, writer):
        connections.append(writer)
        for answer in answers:
            request = await _read_request(reader)
            assert request.startswith(b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:")
            writer.write(answer)
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close")
        writer.write_eof()

    async def main():
        server, port = await raw_server(handler)
        client = UpstreamClient()
        bodies = []
        for _ in range(3):
            response = await client.send(_request(port))
            bodies.append(await response.read())
        assert bodies == [b"hello", b"abcde", b"until close"]
        assert len(connections) == 1  # one connection carried all three
        assert client.stats().active == 0
        await stop_raw(server, client)

    asyncio.run(main())


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one():
    served = []

    async def handler(reader, writer):
        await _read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.write_eof()  # closes without saying so: the pooled connection goes stale

    async def main():
        server, port = await raw_server(handler)
        client = UpstreamClient()
        first = await client.send(_request(port))
        assert await first.read() == b"ok"
        await asyncio.sleep(0.05)
        second = await client.send(_request(port))
        assert await second.read() == b"ok"
        assert len(served) == 2
        await stop_raw(server, client)

    asyncio.run(main())


def test_timeouts_and_refused_connections_are_geopin_errors():
    async def silent(reader, writer):
        pass  # reads the request, never answers

    async def main():
        server, port = await raw_server(silent)
        client = UpstreamClient(read_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await client.send(_request(port))
        assert client.stats() == client.stats().__class__(idle=0, active=0)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        with pytest.raises(UpstreamConnectError):
            await client.send(_request(port))
        await client.aclose()

    asyncio.run(main())


def test_an_abandoned_response_drops_its_connection():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")

    async def main():
        server, port = await raw_server(handler)
        client = UpstreamClient()
        response = await client.send(_request(port))
        assert await response.chunk() == b"abc"
        response.close()  # not read to its end: never back in the pool
        assert client.stats().idle == 0 and client.stats().active == 0
        await stop_raw(server, client)

    asyncio.run(main())
