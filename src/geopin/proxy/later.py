"""Work a response leaves behind, done in the router's next idle moment.

Once a response's last byte has gone, the router still reads the usage the answer reports
(a stream's: from its last events), writes its outcome record (encoded and journaled: 50 to
120 µs) and its access line (20 to 55 µs) and ends its span. Done there and then, that work
delays whatever came in meanwhile: a client that sends its next request as soon as an answer
ends (an agent's loop, a stream followed by the next call) waited for it before the router
even read its request. So that work is queued here, and done

- while a request waits for its upstream's answer (``run`` is called once the request is
  written upstream: the router has nothing else to do for it until the head arrives), but
  for a streamed call (``"stream": true``) once its first event has gone (``run_soon``): a
  stream's client waits for that event, and the work a stream leaves runs slowest, after the
  router idled between the stream's events (it took longer than the head's wait), or
- ``max_delay_s`` later at most (a timer), or
- at shutdown, before the audit writer closes.

Nothing that a later request reads is queued here: where an object the answer made lives
(``ObjectHomes``) is learned at once, and so are the request's metrics (its GenAI usage
metrics come with the usage); its span ends with the time the response ended. A failing piece
of work is logged and the rest still runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_DELAY_S = 0.002


class Later:
    """A queue of work run by :meth:`run`, which a timer calls ``max_delay_s`` after the first
    piece is queued if nobody has. One per event loop (the runtime's)."""

    def __init__(self, max_delay_s: float = MAX_DELAY_S) -> None:
        self.max_delay_s = max_delay_s
        self._work: deque[tuple[Callable[..., Any], dict[str, Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._running = False  # run() is draining the queue: what is added now runs in it

    def add(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        """Queue ``fn(**kwargs)``; done at once when no event loop runs (nothing would run it).
        Work queued by work being run (an answer's usage read, then its outcome record) runs
        in the same :meth:`run`."""
        self._work.append((fn, kwargs))
        if self._timer is None and not self._running:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.run()
                return
            self._timer = loop.call_later(self.max_delay_s, self._due)

    def _due(self) -> None:
        self._timer = None
        self.run()

    def run_soon(self) -> None:
        """Run the queue in the event loop's next turn, after what this turn wrote has left
        (``turnwrite`` sends a held write at the end of the turn)."""
        if self._work:
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Do everything queued, oldest first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        work = self._work
        self._running = True
        try:
            while work:
                fn, kwargs = work.popleft()
                try:
                    fn(**kwargs)
                except Exception:
                    log.exception("work after a response failed: %s", getattr(fn, "__name__", fn))
        finally:
            self._running = False

    def __len__(self) -> int:
        return len(self._work)
