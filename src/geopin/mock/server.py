"""Running the mock upstream: in the foreground for the CLI, or in a thread for tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from geopin.errors import GeopinError
from geopin.mock.app import MockUpstream, create_app

_GRACE_S = 1.0
_START_TIMEOUT_S = 10.0


def _config(app: MockUpstream, host: str, port: int, log_level: str) -> uvicorn.Config:
    # uvloop + httptools and no access log: the mock is the baseline in benchmarks.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        server_header=False,
        date_header=False,
        backlog=4096,
    )


def run(region: str, port: int, host: str = "127.0.0.1", **options: Any) -> None:
    """Serve a mock upstream in the foreground until interrupted."""
    app = create_app(region, **options)
    uvicorn.Server(_config(app, host, port, "warning")).run()


@dataclass
class RunningServer:
    """A mock upstream serving on a real socket in a background thread."""

    region: str
    host: str
    port: int
    app: MockUpstream
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving: a second for the answers under way, then the rest (a stream a client
        left, still producing) are dropped rather than waited for."""
        self._server.should_exit = True
        self._thread.join(timeout=_GRACE_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=_START_TIMEOUT_S)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_thread(
    region: str, port: int = 0, *, host: str = "127.0.0.1", **options: Any
) -> RunningServer:
    """Start a mock upstream on ``host:port`` (0 picks a free port) and wait until it listens."""
    app = create_app(region, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GeopinError(f"mock upstream {region}: cannot bind {host}:{port}: {exc}") from exc
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, bound_port, "error"))
    thread = threading.Thread(
        target=_serve, args=(server, sock), name=f"mock-upstream-{region}", daemon=True
    )
    thread.start()
    # uvicorn flips ``started`` once the socket accepts; poll, bounded, instead of racing it.
    deadline = time.monotonic() + _START_TIMEOUT_S
    while thread.is_alive() and not server.started and time.monotonic() < deadline:
        time.sleep(0.005)
    if not server.started:
        server.should_exit = True
        raise GeopinError(f"mock upstream {region}: server did not start on {host}:{bound_port}")
    return RunningServer(region, host, bound_port, app, server, thread)


def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
