"""One timer watches every attempt waiting for its answer's head."""

from __future__ import annotations

import asyncio

import pytest

from geopin.proxy import watch
from geopin.proxy.protocol import CLIENT_GONE
from geopin.proxy.watch import HeadWatch, StreamWatch


class _Client:
    """An ASGI receive(): nothing until the test disconnects the client."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.calls = 0

    async def receive(self) -> dict:
        self.calls += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


@pytest.fixture(autouse=True)
def short_watch(monkeypatch):
    monkeypatch.setattr(watch, "WATCH_AFTER_S", 0.05)


async def _attempt(heads: HeadWatch, scope: dict, client: _Client, wait_s: float) -> str:
    """An attempt waiting ``wait_s`` for its answer's head, watched by ``heads``."""
    guard = heads.start(scope, client.receive)
    try:
        await asyncio.sleep(wait_s)  # the upstream's answer
        return "answered"
    except asyncio.CancelledError:
        assert guard.tripped
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return "client gone"
    finally:
        heads.done(guard)


def test_only_an_attempt_that_waits_long_is_watched_and_a_disconnect_cancels_it():
    async def scenario() -> None:
        heads = HeadWatch()
        quick, slow = _Client(), _Client()

        fast_task = asyncio.create_task(_attempt(heads, {}, quick, 0.01))
        slow_task = asyncio.create_task(_attempt(heads, {}, slow, 10))
        assert await fast_task == "answered"
        await asyncio.sleep(0.12)  # past WATCH_AFTER_S: the slow one is watched now
        assert (quick.calls, slow.calls) == (0, 1)
        slow.gone.set()
        assert await asyncio.wait_for(slow_task, 1) == "client gone"
        assert heads._waiting == {}
        await asyncio.sleep(0.06)
        assert heads._timer is None  # nothing waits: no timer either
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, leftover

    asyncio.run(scenario())


def test_many_attempts_share_one_timer_and_a_disconnect_after_the_answer_changes_nothing():
    async def scenario() -> None:
        heads = HeadWatch()
        loop = asyncio.get_running_loop()
        timers = []
        call_later = loop.call_later
        loop.call_later = lambda *args: timers.append(args) or call_later(*args)  # type: ignore[method-assign]
        clients = [_Client() for _ in range(50)]
        guards = [heads.start({}, c.receive) for c in clients]
        assert len(timers) == 1  # one timer for fifty attempts
        for guard in guards[:25]:
            heads.done(guard)  # answered in time
        await asyncio.sleep(0.12)
        assert [c.calls for c in clients] == [0] * 25 + [1] * 25
        for guard in guards[25:]:
            heads.done(guard)  # answered late: the watches end, nothing is cancelled
        for client in clients:
            client.gone.set()
        await asyncio.sleep(0.01)
        assert not any(guard.tripped for guard in guards)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_under_geopins_protocol_an_attempt_is_cancelled_the_moment_its_client_leaves():
    """No timer, no task: the connection's callback trips the guard; done() clears it."""

    async def scenario() -> None:
        heads = HeadWatch()
        callbacks: list = []
        scope = {CLIENT_GONE: callbacks.append}
        client = _Client()

        task = asyncio.create_task(_attempt(heads, scope, client, 10))
        await asyncio.sleep(0)
        assert heads._timer is None and heads._waiting == {} and callable(callbacks[-1])
        callbacks[-1]()  # the connection is lost
        assert await asyncio.wait_for(task, 1) == "client gone"
        assert callbacks[-1] is None and client.calls == 0

        answered = heads.start(scope, client.receive)  # an answer that came in time
        heads.done(answered)
        assert callbacks[-1] is None and not answered.tripped

    asyncio.run(scenario())


class _Response:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def test_a_stream_is_aborted_when_the_connection_says_its_client_left():
    """Under geopin's protocol: the callback the watch sets is the connection's to call; no
    task is started; stopping clears it."""

    async def main() -> None:
        callbacks: list = []
        scope = {CLIENT_GONE: callbacks.append}
        client, response = _Client(), _Response()
        before = asyncio.all_tasks()
        stream = StreamWatch(scope, client.receive, response)
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before and client.calls == 0
        assert not stream.gone and response.aborted == 0
        callbacks[-1]()  # the connection is lost
        assert stream.gone and response.aborted == 1
        stream.stop()
        assert callbacks[-1] is None

    asyncio.run(main())


def test_under_another_server_a_task_watches_receive_and_stop_ends_it():
    async def main() -> None:
        client, response = _Client(), _Response()
        stream = StreamWatch({}, client.receive, response)
        await asyncio.sleep(0)
        assert client.calls == 1 and not stream.gone
        client.gone.set()
        await asyncio.sleep(0.01)
        assert stream.gone and response.aborted == 1

        quiet, untouched = _Client(), _Response()
        stopped = StreamWatch({}, quiet.receive, untouched)
        await asyncio.sleep(0)
        tasks = {t for t in asyncio.all_tasks() if t.get_name() == "geopin-disconnect-watch"}
        assert len(tasks) == 1
        stopped.stop()
        await asyncio.sleep(0)
        assert all(t.done() for t in tasks)
        quiet.gone.set()
        await asyncio.sleep(0.01)
        assert not stopped.gone and untouched.aborted == 0

    asyncio.run(main())
