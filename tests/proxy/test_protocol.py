"""The router's HTTP protocol tells a request when its client goes away: over real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from geopin.proxy.protocol import CLIENT_GONE

from .conftest import serve_on_thread

_told: list[str] = []  # the requests whose callback ran, in order
_lock = threading.Lock()


def _tell(name: str):  # noqa: ANN202
    def told() -> None:
        with _lock:
            _told.append(name)

    return told


async def _app(scope, receive, send):  # noqa: ANN001
    """/hold/NAME: the head, then nothing for 5 s, NAME told if the client leaves;
    /done/NAME: a whole answer, the callback set and then cleared before it;
    /late/NAME: the callback set 0.3 s after the request came, nothing answered."""
    if scope["type"] != "http":
        return
    name = scope["path"].rsplit("/", 1)[-1]
    when_gone = scope[CLIENT_GONE]
    if scope["path"].startswith("/late/"):  # asks only once its client has left
        await asyncio.sleep(0.3)
        when_gone(_tell(name))
        return
    when_gone(_tell(name))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"].startswith("/hold/"):
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(5)
    else:
        when_gone(None)
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def server():
    _told.clear()
    port, _, served, thread = serve_on_thread(_app)
    yield port
    served.should_exit = True
    served.force_exit = True  # /hold's answers would keep it 5 s
    thread.join(10)


def _wait_told(expected: list[str], within_s: float = 2.0) -> list[str]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with _lock:
            if len(_told) >= len(expected):
                break
        time.sleep(0.01)
    time.sleep(0.1)  # and nothing more follows
    with _lock:
        return list(_told)


def test_a_client_leaving_mid_answer_is_told_at_once(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /hold/a HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while b"first" not in got:
            got += client.recv(65536)
        left = time.monotonic()
    assert _wait_told(["a"]) == ["a"]
    assert time.monotonic() - left < 2  # not when the answer's 5 s are over


def test_a_cleared_callback_is_not_called_and_the_next_request_holds_its_own(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /done/a HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"0\r\n\r\n"):
            got += client.recv(65536)
        client.sendall(b"GET /hold/b HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while b"first" not in got:
            got += client.recv(65536)
    assert _wait_told(["b"]) == ["b"]


def test_a_connection_closed_after_its_answer_tells_nobody(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /done/a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        while client.recv(65536):
            pass
    assert _wait_told(["never"], within_s=0.3) == []


def test_a_request_that_asks_after_its_client_left_is_told_at_once(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /late/a HTTP/1.1\r\nhost: x\r\n\r\n")
    assert _wait_told(["a"]) == ["a"]
