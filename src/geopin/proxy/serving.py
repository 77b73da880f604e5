"""Running the router under uvicorn: a graceful drain on SIGTERM, and several worker processes.

uvicorn alone, on SIGTERM, closes the listening socket at once and, when done, raises the
signal again so the process dies of it (exit status -15). geopin instead drains:

1. the router marks itself draining: ``/_geopin/readyz`` answers 503 and new proxy requests
   get a 503 ``shutting_down`` with ``Connection: close``, so a balancer moves on;
2. requests and streams in flight run to their end, for at most ``shutdown_grace_s``;
3. uvicorn then stops listening and closes what is left, and the application's shutdown
   flushes the audit queue, stops the sequencer after it, and sends the last telemetry;
4. the process exits 0.

A second SIGINT (Ctrl-C twice) cuts the drain short; the shutdown of step 3 still runs.

With ``workers > 1`` the parent binds the socket once and starts each worker in its own
process (spawned, so nothing of the parent's state is shared); SIGTERM or SIGINT to the parent
is passed to every worker as SIGTERM and the parent waits for them to drain, SIGHUP is passed
on so every worker reloads its policy. A worker whose parent dies (SIGKILL, a crash) drains and
exits within a second or two as on SIGTERM, rather than serve on with nobody supervising it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn

from geopin.proxy.reload import SUPERVISOR_ENV
from geopin.telemetry.accesslog import configure_logging, flush_logs

log = logging.getLogger("geopin.serve")

_SHUTDOWN_MARGIN_S = 15.0  # beyond the grace: the application's own shutdown (audit flush)
_EARLY_DEATH_S = 10.0  # a worker dying this soon after its start is not restarted


def _runtime_of(app: Any) -> Any:
    """The router's Runtime behind whatever uvicorn wrapped the application in."""
    for _ in range(8):
        runtime = getattr(app, "runtime", None)
        if runtime is not None:
            return runtime
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class GracefulServer(uvicorn.Server):
    """uvicorn's server with geopin's drain (see the module documentation)."""

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it would record the signal and raise it again at the end, so the
        # process would die of it instead of exiting 0 after a clean drain.
        if self.draining:
            if sig == signal.SIGINT:
                self.should_exit = True  # Ctrl-C again: stop waiting for what is in flight
            return
        if self._loop is None or not self.started:
            self.should_exit = True  # nothing is served yet: nothing to drain
            return
        self.draining = True
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        runtime = _runtime_of(self.config.loaded_app)
        if runtime is not None:
            runtime.draining = True
        log.info("draining for up to %.1fs before exiting", self.grace_s)
        self._drain_task = asyncio.get_running_loop().create_task(
            self._drain(runtime), name="geopin-drain"
        )

    async def _drain(self, runtime: Any) -> None:
        deadline = time.monotonic() + self.grace_s
        while (
            runtime is not None
            and runtime.in_flight > 0
            and not self.should_exit
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        if runtime is not None and runtime.in_flight > 0:
            log.warning("%d requests still in flight at the end of the grace", runtime.in_flight)
        # uvicorn's own wait for open connections gets what is left of the grace.
        self.config.timeout_graceful_shutdown = max(int(deadline - time.monotonic()), 1)
        self.should_exit = True


def serve(config: uvicorn.Config, grace_s: float) -> None:
    """One process: serve until SIGTERM or SIGINT, drain, return."""
    try:
        GracefulServer(config, grace_s).run()
    finally:
        flush_logs()


def serve_workers(
    config: uvicorn.Config, workers: int, grace_s: float, logging_options: Mapping[str, Any]
) -> int:
    """``workers`` processes on one socket; returns 0 when every worker exited cleanly."""
    sock = config.bind_socket()
    context = multiprocessing.get_context("spawn")
    options = dict(logging_options)
    stop = threading.Event()
    hangups: list[int] = []

    def start() -> Any:
        process = context.Process(
            target=_worker,
            args=(config, [sock], grace_s, options),
            name="geopin-worker",
        )
        process.start()
        log.info("started worker process %d", process.pid)
        return process, time.monotonic()

    previous = {
        sig: signal.signal(sig, lambda s, f: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda s, f: hangups.append(s))
    processes = [start() for _ in range(workers)]
    failed = False
    try:
        while not stop.wait(0.25):
            while hangups:
                hangups.pop()
                for process, _ in processes:
                    _signal(process, signal.SIGHUP)
            for i, (process, started) in enumerate(processes):
                if process.is_alive():
                    continue
                if time.monotonic() - started < _EARLY_DEATH_S:
                    log.error(
                        "worker %d exited with status %s right after starting; stopping",
                        process.pid,
                        process.exitcode,
                    )
                    failed = True
                    stop.set()
                    break
                log.warning("worker %d died (status %s); starting another", *(
                    process.pid, process.exitcode))  # fmt: skip
                processes[i] = start()
    finally:
        for process, _ in processes:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + _SHUTDOWN_MARGIN_S
        for process, _ in processes:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                log.error("worker %d did not stop in time; killed", process.pid)
                process.kill()
                process.join()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    clean = all(_stopped_cleanly(process) for process, _ in processes)
    return 0 if clean and not failed else 1


def _stopped_cleanly(process: Any) -> bool:
    """Exit 0 after a drain, or killed by the SIGTERM passed on before it had taken the signal
    over (a worker started moments before, to replace one that died): it had served nothing."""
    if process.exitcode == -signal.SIGTERM:
        log.info("worker %d stopped while starting, before it served anything", process.pid)
        return True
    return process.exitcode == 0


def _signal(process: Any, sig: int) -> None:
    if process.is_alive() and process.pid is not None:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass


def _drain_when_orphaned(supervisor: int, interval_s: float = 1.0) -> None:
    """A worker whose supervisor died (SIGKILL, a crash) would go on serving, on the shared
    socket, with no one to pass signals on or restart it, and keep the port from the next
    start: once it notices it has a new parent, it drains and exits as on SIGTERM."""
    while os.getppid() == supervisor:
        time.sleep(interval_s)
    log.warning("supervisor process %d is gone: draining and exiting", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    config: uvicorn.Config,
    sockets: list[socket.socket],
    grace_s: float,
    logging_options: Mapping[str, Any],
) -> None:
    """A worker process: its own logging, its own application (built by the factory)."""
    supervisor = os.getppid()
    os.environ[SUPERVISOR_ENV] = str(supervisor)  # an admin reload reaches every worker
    # Until its reloader takes SIGHUP over, a starting worker ignores it (it is loading the
    # files anyway); the default action would kill it, and a death so early stops them all.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(**logging_options)
    threading.Thread(
        target=_drain_when_orphaned, args=(supervisor,), name="geopin-supervisor", daemon=True
    ).start()
    try:
        GracefulServer(config, grace_s).run(sockets=sockets)
    finally:
        flush_logs()  # a worker ends in os._exit: nothing at exit would write what waits
