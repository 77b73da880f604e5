"""Relaying an answer to the client: the attempt's bookkeeping (``answered``) runs once, after
the answer's first bytes have gone, however the answer goes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from geopin.policy.decision import Endpoint, ProviderKind, Tier
from geopin.proxy.attempts import _relay
from geopin.proxy.forward import Origin, UpstreamClient, UpstreamRequest
from geopin.proxy.later import Later
from geopin.telemetry.metrics import Metrics

from .conftest import raw_server, stop_raw

ENDPOINT = Endpoint(
    id="eu-se",
    url="http://127.0.0.1/v1",
    kind=ProviderKind.OPENAI,
    country="SE",
    tier=Tier.REGIONAL,
    models={"gpt-4o": "gpt-4o"},
)


async def _never() -> dict:
    await asyncio.Event().wait()  # the client stays
    return {"type": "http.disconnect"}


async def _relayed(
    answer: list[bytes], events: list[str], *, send_fails: bool = False
) -> str | None:
    """Relay an upstream answer written in ``answer``'s pieces (a pause between them), noting
    in ``events`` what happens, in order ("start", "body:<text>", "end", "answered"); the
    relay's error."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in answer:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        if answer[-1] == b"":  # a close before the answer was whole
            writer.close()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            events.append("start")
        elif message.get("more_body"):
            if send_fails:
                raise OSError("the client's socket is gone")
            events.append("body:" + message["body"].decode())
        else:
            events.append("end")

    server, port = await raw_server(handler)
    client = UpstreamClient()
    try:
        request = UpstreamRequest(Origin("http", "127.0.0.1", port), "GET", "/v1/x", [], b"")
        response = await client.send(request)
        _, error = await _relay(
            response, ENDPOINT, "d-1", {}, _never, send, Metrics(None), 0.0, Later(),
            lambda: events.append("answered"),
        )  # fmt: skip
    finally:
        await stop_raw(server, client)
    return error


def test_a_stream_is_answered_after_its_first_event_has_gone():
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    events: list[str] = []
    error = asyncio.run(_relayed([head, b"3\r\none\r\n", b"3\r\ntwo\r\n0\r\n\r\n"], events))
    assert error is None
    assert events == ["start", "body:one", "answered", "body:two", "end"]


def test_an_answer_without_a_body_is_answered_once():
    events: list[str] = []
    error = asyncio.run(_relayed([b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], events))
    assert error is None
    assert events == ["start", "end", "answered"]


def test_an_answer_broken_off_before_its_body_is_still_answered_once():
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    events: list[str] = []
    error = asyncio.run(_relayed([head, b""], events))
    assert error is not None and "mid-response" in error
    assert events == ["start", "answered"]


def test_a_client_gone_at_the_first_bytes_still_answers_once():
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    events: list[str] = []
    with pytest.raises(OSError):
        asyncio.run(_relayed([answer], events, send_fails=True))
    assert events == ["start", "answered"]
