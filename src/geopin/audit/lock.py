"""The lock that lets one sequencer at a time work on a SQLite audit log, cheaply; and the
scheduling priority of background audit work.

SQLite's own write lock (``BEGIN IMMEDIATE``) already makes two sequencers safe, but the one
that loses waits on the busy timeout, polling with sleeps of up to 100 ms, and queues with the
writers for the same lock. Every router process runs a sequencer, so losing must cost nothing:
a non-blocking ``flock`` on a file beside the database decides who sequences before anyone
asks SQLite for its write lock. PostgreSQL needs no file: its advisory lock already answers at
once.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive ``flock`` on ``path``, held between ``acquire`` and ``release``.

    Locks are per open file, so two ``FileLock`` objects exclude each other even in one
    process. If the file cannot be opened (a read-only directory), the lock always succeeds
    and SQLite's write lock alone keeps sequencers apart.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._usable = True

    def acquire(self, *, wait: bool) -> bool:
        if not self._usable:
            return True
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                self._usable = False
                log.warning(
                    "sequencer lock file %s unusable, relying on SQLite: %s", self.path, exc
                )
                return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            return False
        return True

    def release(self) -> None:
        """Unlock and close: a sequencer holds no descriptor between runs."""
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases its flock
            self._fd = None


def low_priority() -> None:
    """The calling thread at the highest nice value: it still gets a small share of a busy CPU
    (so it never holds a lock for long) and all of an idle one, and a request thread that wakes
    up preempts it at once."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # Linux: the calling thread only
    except (AttributeError, OSError):
        pass


def background_priority() -> None:
    """Put the calling thread (Linux schedules threads one by one) in ``SCHED_IDLE``: it runs
    only when the router's other threads leave the CPU idle, so a request thread that wakes up
    gets the core at once instead of after the scheduler's wake-up granularity (milliseconds:
    the p99 of a request). Failing that, the lowest nice value; failing that, as it was."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except (AttributeError, OSError):
        pass
