"""A response's head leaves with the first part of its body, in one send(2).

uvicorn writes a response's head the moment the application starts the response, and each
part of the body as it is sent. A proxied answer whose head and first bytes arrive together
(a JSON answer, a stream's first event) so left in two sends: two TCP segments, two wake-ups
of the client, and the first byte of the body waited for the second send. Here a write is held
until the next one, which leaves with it, or until the end of the event loop's turn
(``loop.call_soon``), whichever comes first; the end of a response writes what is held at once.
So nothing waits for a later turn: a stream's head still leaves as soon as the router has it,
whether its first event has come or not, and the bookkeeping after a response (its outcome
record, its access line) does not hold its last bytes back.

:class:`geopin.proxy.protocol.HttpProtocol` wraps every connection's transport so. Closing
or ending the connection writes what is held first; aborting it drops it, as aborting drops
the transport's own buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any


class TurnTransport:
    """A transport that holds a write until the next one or the end of the loop's turn."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None  # the pair leaves now, together
        if not self._transport.is_closing():
            self._transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = len(self._held) if self._held is not None else 0
        return self._transport.get_write_buffer_size() + held

    # What flow control and the protocol ask on every request, passed straight on.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # anything else a transport has
        return getattr(self._transport, name)
