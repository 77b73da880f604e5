"""The HTTP protocol the router serves with: uvicorn's httptools protocol, with two additions.

- Every connection's transport is a :class:`~geopin.proxy.turnwrite.TurnTransport`: a
  response's head leaves with the first part of its body, in one send.
- The connection tells the application when its client goes away. Each request's scope
  carries, under :data:`CLIENT_GONE`, a function that sets what to call when the connection is
  lost (``None`` to call nothing); set after it was lost, it is called at once. A request
  waiting for its upstream's answer is so cancelled, and a stream being relayed aborted, the
  moment its client leaves, without a task per request waiting on ``receive()`` for
  ``http.disconnect``. Under another ASGI server the key is absent and the application
  watches ``receive()`` itself (``geopin.proxy.watch``).

Run it with ``uvicorn.Config(http=HttpProtocol)``. Requests on one connection run one after
the other, so the connection holds one callback: the running request's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from geopin.proxy.turnwrite import TurnTransport

CLIENT_GONE = "geopin.client_gone"  # scope key: set the callback for the client's leaving


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a :class:`TurnTransport` and telling the
    application when the client goes away."""

    _on_gone: Callable[[], None] | None = None
    _lost = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(TurnTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CLIENT_GONE] = self._when_gone  # type: ignore[literal-required]

    def _when_gone(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self._lost:
            callback()  # the client left before the request asked: it is told at once
            return
        self._on_gone = callback

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        callback, self._on_gone = self._on_gone, None
        if callback is not None:
            callback()
