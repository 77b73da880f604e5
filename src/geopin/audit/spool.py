"""The opt-in local spool: records the database could not take, kept on disk until it returns.

One canonical record per line (canonical JSON never contains a raw newline). Appends are
fsync'd before ``AuditWriter.record()`` returns, so a spooled record is as durable as a
committed one. Replay inserts the lines into the pending table and only then empties the
file, so a crash in between replays them again; the copies never reach the log (PostgreSQL's
pending table skips a record id it holds, and the sequencer drops a record the log or its batch
already has). Each router process needs its own spool file; an advisory lock guards
against two processes sharing one by mistake.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from geopin.errors import AuditError

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self, mode: str) -> Iterator[int]:
        try:
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | (os.O_APPEND if mode == "a" else 0), 0o600
            )
        except OSError as exc:
            raise AuditError(f"audit spool {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def append(self, bodies: Sequence[bytes]) -> None:
        """Append canonical record bodies and fsync them."""
        data = b"".join(body + b"\n" for body in bodies)
        with self._locked("a") as fd:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                raise AuditError(f"audit spool {self.path}: {exc.strerror}") from exc

    def has_records(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def replay(self, insert: Callable[[list[tuple[str, bytes]]], None]) -> int:
        """Hand every spooled (record id, body) to ``insert`` (which commits them), then empty
        the spool; the lock is held throughout. Returns how many records were replayed.

        A last line without its newline was being written when the process died, so its
        ``record()`` never returned; it is replayed if it is a whole record and reported either
        way. Any other unreadable line is kept in ``<spool>.rejected`` and reported, never
        dropped silently.
        """
        if not self.has_records():
            return 0
        with self._locked("r") as fd:
            rows, rejected = parse_records(_read_all(fd), self.path)
            if rows:
                insert(rows)  # raises if the database is still away: the spool stays as it is
            if rejected:
                set_aside(rejected, Path(f"{self.path}.rejected"), self.path)
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return len(rows)

    def count(self) -> int:
        """How many records are waiting in the spool."""
        if not self.has_records():
            return 0
        with self._locked("r") as fd:
            return _read_all(fd).count(b"\n")


def parse_records(data: bytes, path: Path) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """The (record id, body) of each line of a file of canonical records (a spool, a journal
    segment), and the lines that are not one. A last line without its newline was being
    written when its process died: kept if it is a whole record, reported either way."""
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn:
        log.warning("audit records file %s ends with an unterminated record", path)
        lines.append(torn)
    rows: list[tuple[str, bytes]] = []
    rejected: list[bytes] = []
    for line in lines:
        if not line:
            continue
        record_id = _record_id(line)
        if record_id is None:
            rejected.append(line)
        else:
            rows.append((record_id, line))
    return rows, rejected


def set_aside(lines: list[bytes], sink: Path, source: Path) -> None:
    """Keep unreadable lines of ``source`` in ``sink`` (appended, fsync'd) and report them:
    never dropped silently."""
    with open(sink, "ab") as out:
        out.write(b"".join(line + b"\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    log.error("audit records file %s: %d unreadable lines moved to %s", source, len(lines), sink)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _record_id(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    rid = value.get("id") if isinstance(value, dict) else None
    return rid if isinstance(rid, str) and rid else None
