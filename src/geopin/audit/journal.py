"""The journal: where a router process keeps a request's audit records the moment it makes them.

On SQLite with ``synchronous=NORMAL`` a committed transaction is in the kernel's page cache, not
yet on the disk: it survives the death of the process, not of the machine. One ``write(2)`` to a
file of the process's own gives exactly that, for a few microseconds and without a lock that
anybody else holds; a SQLite commit cost the request tens of microseconds, more when another
writer of the file had its lock. So the writer appends each record a request makes to its
process's journal, the request goes on at once, and the writer's thread moves the records into
the inbox in batches (``geopin.audit.writer``).

Beside the database, in ``<database>-journals/`` (not ``-journal``: that is SQLite's own name):

- ``<token>.lock``: held with ``flock`` by the living process that owns the token, and holding
  the number of that journal's records the database has (the writer rewrites it after each
  commit). It is made under another name and renamed once locked, so nobody sees it unlocked
  while its owner lives;
- ``<token>.<first>.jnl``: the owner's segments, named by the number of their first record, one
  canonical record per line (canonical JSON holds no raw newline). A new one every
  ``SEGMENT_BYTES``, and after a failed write, so a torn line is never followed by a record in
  the same file; one is removed once the database has every record in it.

So the records still to be moved are exactly those numbered above the lock file's count
(:func:`waiting`). A process that dies (SIGKILL, out of memory) leaves its files and its lock
free; the sequencer, in any process, takes such a lock, inserts those records into the inbox and
removes the files (:func:`recover`). A record inserted twice (the process died between its
commit and the count's update) never reaches the log twice: the sequencer drops the copy.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from geopin.audit.spool import parse_records, set_aside
from geopin.errors import AuditError

log = logging.getLogger(__name__)

SUFFIX = "-journals"
SEGMENT_BYTES = 1 << 20
_LOCK = ".lock"
_SEGMENT = ".jnl"
_MAKING = ".making"  # a lock file not yet locked and renamed
_STALE_S = 60.0  # a lock file still being made is younger than this
_COUNT_WIDTH = 20

Insert = Callable[[list[tuple[str, bytes]]], None]


def journal_dir(database: str) -> Path:
    """The journal directory of the SQLite database file ``database``."""
    return Path(os.path.realpath(database) + SUFFIX)


class Journal:
    """This process's journal. ``append`` is called from one thread (the event loop's),
    ``committed`` from one other (the writer's)."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.token = secrets.token_hex(8)
        self.appended = 0  # records appended so far: the last one's number
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        # Segments no longer written to, each with the number of its last record, oldest first.
        self._closed: deque[tuple[Path, int]] = deque()

    def open(self) -> None:
        """Make the directory if need be and lock this process's token (raises AuditError
        naming the path)."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            making = self.directory / f"{self.token}{_MAKING}"
            fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(making, self.directory / f"{self.token}{_LOCK}")
        except OSError as exc:
            raise AuditError(f"audit journal {self.directory}: {exc.strerror or exc}") from exc
        self._lock_fd = fd

    def append(self, body: bytes) -> int:
        """Write one canonical record; its number once it is written. Raises AuditError when it
        cannot be, and then nothing of it counts as kept."""
        if self._fd is None:
            self._start_segment()
        assert self._fd is not None
        data = memoryview(body + b"\n")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            path = self._path
            # What was written of this record is a torn line: later records go to a new segment.
            self._close_segment()
            raise AuditError(f"audit journal {path}: {exc.strerror or exc}") from exc
        self.appended += 1
        self._size += len(body) + 1
        if self._size >= self.segment_bytes:
            self._close_segment()
        return self.appended

    def committed(self, through: int) -> None:
        """The database has every record up to number ``through``: say so in the lock file and
        remove the segments that hold nothing else."""
        if self._lock_fd is not None:
            try:
                os.pwrite(self._lock_fd, _count(through), 0)
            except OSError as exc:  # recovery would insert copies, which the log drops
                log.warning("audit journal %s: count not updated: %s", self.directory, exc)
        closed = self._closed
        while closed and closed[0][1] <= through:
            _remove(closed.popleft()[0])

    def close(self, *, keep: bool) -> None:
        """Stop journaling. ``keep``: some records are not in the database, so leave the files
        for the sequencer to recover; else remove them all. Releases the lock either way."""
        self._close_segment()
        if not keep:
            while self._closed:
                _remove(self._closed.popleft()[0])
            _remove(self.directory / f"{self.token}{_LOCK}")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_segment(self) -> None:
        path = self.directory / f"{self.token}.{self.appended + 1}{_SEGMENT}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise AuditError(f"audit journal {path}: {exc.strerror or exc}") from exc
        self._path = path
        self._size = 0

    def _close_segment(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.close(self._fd)
        self._closed.append((self._path, self.appended))
        self._fd = self._path = None


def waiting(directory: Path) -> int:
    """How many journaled records, of living processes and ended ones, the database does not
    have yet (0 without a journal directory)."""
    return len(unmoved(directory))


def unmoved(directory: Path) -> list[bytes]:
    """The journaled records (canonical bodies) the database does not have yet, of living
    processes and ended ones. Reads the files and takes no lock: a record being written is
    not among them until it is whole."""
    if not directory.is_dir():
        return []
    found: list[bytes] = []
    for lock in directory.glob(f"*{_LOCK}"):
        token = lock.name.split(".", 1)[0]
        done = _read_count(lock)
        for first, segment in _segments(directory, token):
            try:
                lines = segment.read_bytes().split(b"\n")[:-1]  # the last is not whole yet
            except FileNotFoundError:  # all in the database, and removed meanwhile
                continue
            found.extend(lines[max(0, done - first + 1) :])
    return found


def recover(directory: Path, insert: Insert) -> int:
    """Move the records of every journal whose process has ended, and that the database does
    not have, into it through ``insert`` (which commits them), then remove its files; the
    number of records moved.

    A journal whose lock is held belongs to a living process (or is being recovered by
    another) and is left alone. If ``insert`` raises, the files stay for the next try.
    Unreadable lines are kept in ``<token>.rejected`` and reported.
    """
    if not directory.is_dir():
        return 0
    moved = 0
    for lock in sorted(directory.glob(f"*{_LOCK}")):
        moved += _recover_one(directory, lock, insert)
    for making in directory.glob(f"*{_MAKING}"):
        _remove_stale(making)
    return moved


def _recover_one(directory: Path, lock: Path, insert: Insert) -> int:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # recovered or closed meanwhile
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        token = lock.name.split(".", 1)[0]
        done = _read_count(lock)
        segments = list(_segments(directory, token))
        rows: list[tuple[str, bytes]] = []
        unreadable: list[tuple[Path, list[bytes]]] = []
        for first, segment in segments:
            found, rejected = parse_records(segment.read_bytes(), segment)
            rows.extend(found[max(0, done - first + 1) :])
            if rejected:
                unreadable.append((segment, rejected))
        if rows:
            insert(rows)
        for segment, rejected in unreadable:
            set_aside(rejected, directory / f"{token}.rejected", segment)
        for _, segment in segments:
            _remove(segment)
        _remove(lock)
        if rows:
            log.warning(
                "audit journal %s of an ended process: %d records moved into the database",
                token,
                len(rows),
            )
        return len(rows)
    finally:
        os.close(fd)


def _segments(directory: Path, token: str) -> Iterator[tuple[int, Path]]:
    """(first record number, path) of ``token``'s segments, in order."""
    found = []
    for path in directory.glob(f"{token}.*{_SEGMENT}"):
        first = path.name.split(".")[1]
        if first.isdigit():
            found.append((int(first), path))
    return iter(sorted(found))


def _count(through: int) -> bytes:
    return str(through).rjust(_COUNT_WIDTH).encode()


def _read_count(lock: Path) -> int:
    try:
        text = lock.read_bytes()[:_COUNT_WIDTH].strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def _remove_stale(making: Path) -> None:
    """A lock file of a start that died before renaming it (it has no segments yet). One being
    made right now is younger than ``_STALE_S``, and locked."""
    try:
        if time.time() - making.stat().st_mtime < _STALE_S:
            return
        fd = os.open(making, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove(making)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
