"""Hot reload of the policy, the GeoIP database and the keys file, without a restart.

Three triggers: a poll of the files' modification times, ``SIGHUP``, and
``POST /_geopin/reload``. A reload loads everything anew in a worker thread and swaps the whole
runtime state in one assignment, or, when anything is invalid, keeps the running state and
records the failure (with every problem's ``file:line:col``) for ``GET /_geopin/policy`` and
the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geopin.errors import GeopinError
from geopin.proxy.state import (
    Runtime,
    RuntimeState,
    describe_failure,
    failure_kind,
    load_state,
    watched_files,
)

log = logging.getLogger(__name__)

RESOLVER_GRACE_S = 30.0  # an old GeoIP reader stays open this long for requests that hold it
# Set in each worker of ``geopin serve --workers N`` to the supervising process's pid, which
# passes a SIGHUP on to every worker.
SUPERVISOR_ENV = "GEOPIN_SUPERVISOR_PID"


def reload_other_workers() -> bool:
    """Ask every worker of this ``geopin serve`` to reload (this one too, again: the same
    files give the same policy); False when this process is not one of several workers."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid or int(pid) != os.getppid():
        return False
    os.kill(int(pid), signal.SIGHUP)
    return True


@dataclass(frozen=True)
class ReloadOutcome:
    reloaded: bool
    version: str  # the policy version serving now
    previous_version: str
    error: str | None = None
    problems: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "reloaded": self.reloaded,
            "version": self.version,
            "previous_version": self.previous_version,
            "error": self.error,
            "problems": list(self.problems),
        }


class Reloader:
    def __init__(
        self, runtime: Runtime, on_swap: Callable[[RuntimeState], None] | None = None
    ) -> None:
        self.runtime = runtime
        self._on_swap = on_swap
        self._lock = asyncio.Lock()
        self._fingerprint = watched_files(runtime.settings)
        self._task: asyncio.Task | None = None
        self._hangups: set[asyncio.Task] = set()  # reloads started by SIGHUP, still running
        self._signal = False

    async def reload(self, reason: str) -> ReloadOutcome:
        async with self._lock:
            holder = self.runtime.holder
            old = holder.current
            fingerprint = watched_files(self.runtime.settings)
            try:
                new = await asyncio.to_thread(load_state, self.runtime.settings)
            except GeopinError as exc:
                self._fingerprint = fingerprint  # not retried until something changes again
                failure = describe_failure(exc, failure_kind(exc))
                holder.failure = failure
                self.runtime.telemetry.metrics.policy_reload(ok=False, what=failure.what)
                log.error(
                    "reload (%s) rejected, still serving policy %s:\n%s",
                    reason,
                    old.policy.version,
                    failure.message,
                )
                return ReloadOutcome(
                    False,
                    old.policy.version,
                    old.policy.version,
                    failure.message,
                    tuple(failure.problems),
                )
            self._fingerprint = fingerprint
            holder.current = new
            holder.failure = None
            self.runtime.telemetry.metrics.policy_reload(ok=True)
            if self._on_swap is not None:
                self._on_swap(new)
            if new.resolver is not old.resolver:
                asyncio.get_running_loop().call_later(RESOLVER_GRACE_S, old.resolver.close)
            log.info(
                "reloaded (%s): policy %s -> %s", reason, old.policy.version, new.policy.version
            )
            for problem in new.problems:
                log.warning("%s", problem)
            return ReloadOutcome(True, new.policy.version, old.policy.version)

    async def start(self) -> None:
        interval = self.runtime.settings.reload.poll_interval_s
        if interval > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._poll(interval), name="geopin-reload-poll"
            )
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal = True

    async def close(self) -> None:
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*self._hangups, return_exceptions=True)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(
            self._quiet_reload("SIGHUP"), name="geopin-reload-sighup"
        )
        self._hangups.add(task)  # a reference until it ends
        task.add_done_callback(self._hangups.discard)

    async def _quiet_reload(self, reason: str) -> None:
        await self.reload(reason)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if watched_files(self.runtime.settings) != self._fingerprint:
                    await self.reload("files changed")
            except Exception:  # the watch outlives any one failure
                log.exception("reload poll failed")
