"""A response's head leaves with the first part of its body: the writes a transport is given,
and a real server's answers, over a socket, whole and in order."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from geopin.proxy.turnwrite import TurnTransport

from .conftest import serve_on_thread


class _Recording:
    """The far edge of a TurnTransport: a transport that records what reaches the socket."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def write_eof(self) -> None:
        self.sent.append(b"<eof>")

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.sent.append(b"<limits %d>" % (high or 0))


def _run(body) -> _Recording:  # noqa: ANN001
    async def main() -> _Recording:
        real = _Recording()
        await body(TurnTransport(real, asyncio.get_running_loop()), real)  # type: ignore[arg-type]
        return real

    return asyncio.run(main())


def test_two_writes_in_a_row_leave_as_one():
    async def body(turn, real):
        turn.write(b"head")
        assert real.sent == []  # held for what follows
        turn.write(b"body")
        assert real.sent == [b"headbody"]  # at once, not at the end of the turn

    _run(body)


def test_a_write_nothing_follows_leaves_at_the_end_of_the_turn():
    async def body(turn, real):
        turn.write(b"head")
        await asyncio.sleep(0)
        assert real.sent == [b"head"]
        turn.write(b"event 1")
        await asyncio.sleep(0)
        turn.write(b"event 2")
        turn.write(b"event 3")
        await asyncio.sleep(0)
        assert real.sent == [b"head", b"event 1", b"event 2event 3"]

    _run(body)


def test_empty_writes_are_nothing_and_close_writes_what_is_held_first():
    async def body(turn, real):
        turn.write(b"")
        turn.write(b"last")
        turn.write(b"")
        assert real.sent == []
        turn.close()
        assert real.sent == [b"last"] and real.closing
        await asyncio.sleep(0)  # the end of the turn finds nothing left to write
        assert real.sent == [b"last"]

    _run(body)


def test_write_eof_writes_first_and_abort_drops_what_is_held():
    async def eof(turn, real):
        turn.write(b"tail")
        turn.write_eof()
        assert real.sent == [b"tail", b"<eof>"]

    async def abort(turn, real):
        turn.write(b"dropped")
        assert turn.get_write_buffer_size() == len(b"dropped")
        turn.abort()
        await asyncio.sleep(0)
        assert real.sent == [] and real.aborted

    _run(eof)
    _run(abort)


def test_nothing_is_written_to_a_closing_transport():
    async def body(turn, real):
        turn.write(b"held")
        real.closing = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        turn.write(b"a")
        turn.write(b"b")
        assert real.sent == []

    _run(body)


def test_the_rest_of_a_transport_is_passed_through():
    async def body(turn, real):
        real.buffered = 10
        turn.write(b"12345")
        assert turn.get_write_buffer_size() == 15
        assert turn.get_extra_info("peername") == ("127.0.0.1", 1)
        assert turn.get_extra_info("socket", "none") == "none"
        turn.set_write_buffer_limits(high=64)  # not defined by TurnTransport itself
        assert real.sent == [b"<limits 64>"]

    _run(body)


_BLOCKED = threading.Event()  # set once /blocking's handler has stopped blocking the loop


async def _app(scope, receive, send):  # noqa: ANN001
    """/json: one body; /stream: three parts 20 ms apart; /slow: the head, then a part 0.5 s
    later; /blocking: a whole answer, then work that blocks the loop; else 204."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    start = {"type": "http.response.start", "status": 200, "headers": []}
    if path == "/json":
        body = b'{"ok": true}'
        start["headers"] = [(b"content-length", str(len(body)).encode())]
        await send(start)
        await send({"type": "http.response.body", "body": body})
    elif path in ("/stream", "/slow"):
        await send(start)
        if path == "/slow":
            await asyncio.sleep(0.5)
        for n in range(3):
            await send({"type": "http.response.body", "body": b"part %d\n" % n, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/blocking":
        await send(start)
        await send({"type": "http.response.body", "body": b"all", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        time.sleep(0.5)  # bookkeeping after the answer, in the same turn of the loop
        _BLOCKED.set()
    else:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def server():
    port, _, served, thread = serve_on_thread(_app)
    yield port
    served.should_exit = True
    thread.join(10)


def test_answers_over_a_socket_are_whole_and_in_order_on_one_connection(server):
    """Keep-alive and pipelined requests: every head, body and chunk arrives, in order."""
    paths = (b"json", b"stream", b"empty", b"json")
    requests = b"".join(b"GET /%s HTTP/1.1\r\nhost: x\r\n\r\n" % path for path in paths[:-1])
    requests += b"GET /json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    got = b""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(requests)
        while data := client.recv(65536):  # until the server closes, after the last answer
            got += data
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"204", b"200"], got
    assert answers[0].endswith(b'\r\n\r\n{"ok": true}')
    stream = answers[1]
    assert stream.index(b"part 0") < stream.index(b"part 1") < stream.index(b"part 2")
    assert stream.endswith(b"part 2\n\r\n0\r\n\r\n")
    assert answers[3].endswith(b'{"ok": true}')


def test_a_head_is_not_held_for_a_body_that_has_not_come(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        first = client.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"part" not in first, first


def test_the_end_of_an_answer_is_not_held_behind_work_done_after_it(server):
    _BLOCKED.clear()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"GET /blocking HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"0\r\n\r\n"):
            got += client.recv(65536)
        assert not _BLOCKED.is_set(), "the answer's end waited for the work after it"
