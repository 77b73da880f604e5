"""Noticing a client that goes away while its request waits for an upstream answer.

Under geopin's own HTTP protocol the connection says when its client leaves
(:data:`~geopin.proxy.protocol.CLIENT_GONE`): an attempt waiting for its answer's head is then
cancelled at once (:class:`HeadWatch`), and a stream being relayed is aborted at once
(:class:`StreamWatch`), so the upstream connection is dropped rather than held to the answer,
the stream's next event or the read timeout. Neither costs a task.

Under another ASGI server only ``receive()`` says so, which takes a task waiting on it. A
stream gets one from its first wait on. An attempt gets one once it has waited
``WATCH_AFTER_S`` (a long completion): most answers begin sooner, so attempts are not given a
task or a timer each; a :class:`HeadWatch` keeps the waiting attempts in start order and one
timer for them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from geopin.proxy.protocol import CLIENT_GONE

WATCH_AFTER_S = 0.5


class HeadGuard:
    """One attempt's wait for its answer's head; ``tripped`` once the client went away."""

    __slots__ = ("_receive", "_task", "_watcher", "_hook", "tripped")

    def __init__(self, receive: Any, task: asyncio.Task | None, hook: Any = None) -> None:
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task | None = None
        self._hook = hook  # the connection's CLIENT_GONE, when it has one
        self.tripped = False
        if hook is not None:
            hook(self._trip)

    def _trip(self) -> None:
        if self._task is not None and not self.tripped:
            self.tripped = True
            self._task.cancel()

    def watch(self) -> None:
        self._watcher = watch_receive(self._receive, self._trip)

    def stop(self) -> None:
        if self._hook is not None:
            self._hook(None)
            self._hook = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._task = None  # from here a disconnect is the relay's to notice


class HeadWatch:
    """The attempts of one event loop waiting for an answer's head: each told at once by its
    connection, or else watched once it has waited ``WATCH_AFTER_S``, with one timer."""

    __slots__ = ("_timer", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[HeadGuard, float] = {}  # insertion order is start order
        self._timer: asyncio.TimerHandle | None = None

    def start(self, scope: dict, receive: Any) -> HeadGuard:
        hook = scope.get(CLIENT_GONE)
        if hook is not None:  # the connection says when the client leaves: nothing to time
            return HeadGuard(receive, asyncio.current_task(), hook)
        loop = asyncio.get_running_loop()
        guard = HeadGuard(receive, asyncio.current_task())
        self._waiting[guard] = loop.time() + WATCH_AFTER_S
        if self._timer is None:
            self._timer = loop.call_later(WATCH_AFTER_S, self._sweep)
        return guard

    def done(self, guard: HeadGuard) -> None:
        self._waiting.pop(guard, None)
        guard.stop()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting:
            guard, due = next(iter(waiting.items()))
            if due > now:
                self._timer = loop.call_at(due, self._sweep)
                return
            del waiting[guard]
            guard.watch()
        self._timer = None


class StreamWatch:
    """A relayed stream's watch for its client leaving: ``response`` (its upstream connection)
    is aborted at once, or an idle stream would hold it until its next event. Under geopin's
    own protocol the connection says so (:data:`~geopin.proxy.protocol.CLIENT_GONE`); under
    another server a task waits on ``receive()``. :meth:`stop` it when the relay ends."""

    __slots__ = ("gone", "_response", "_hook", "_task")

    def __init__(self, scope: dict, receive: Any, response: Any) -> None:
        self.gone = False  # the client went away while the stream was relayed
        self._response = response
        self._hook = scope.get(CLIENT_GONE)
        self._task: asyncio.Task | None = None
        if self._hook is not None:
            self._hook(self._left)
        else:
            self._task = watch_receive(receive, self._left)

    def _left(self) -> None:
        self.gone = True
        self._response.abort()

    def stop(self) -> None:
        if self._hook is not None:
            self._hook(None)
        if self._task is not None:
            self._task.cancel()


def watch_receive(receive: Any, then: Callable[[], None]) -> asyncio.Task:
    """Where the connection cannot say when its client leaves: a task reading ``receive()``
    until ``http.disconnect``, then calling ``then()``. Cancel it to stop watching."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        then()

    return asyncio.get_running_loop().create_task(wait(), name="geopin-disconnect-watch")
