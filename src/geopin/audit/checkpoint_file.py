"""The checkpoint file: a copy of every signed checkpoint outside the database.

A database administrator who rewrites the log must also rewrite this file, which lives
elsewhere (another host, an append-only bucket): verify compares the two.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: appends are still atomic per write, just not locked
    fcntl = None  # type: ignore[assignment]

from geopin.audit.checkpoint import SIG_PREFIX, split_note
from geopin.errors import AuditError, VerificationError
from geopin.files import fsync_directory


class TornEntryError(VerificationError):
    """The checkpoint file ends in an incomplete entry, as a crash during a write leaves it.

    ``notes`` holds the complete notes before it (when raised by ``read``), ``line`` and
    ``offset`` where the incomplete entry starts, ``partial`` its text.
    """

    def __init__(self, path: Path, line: int, offset: int, partial: str) -> None:
        self.path, self.line, self.offset, self.partial = path, line, offset, partial
        self.notes: list[str] = []
        super().__init__(
            f"{path}:{line}: the last entry (from byte {offset}) is incomplete, a torn write;"
            " the complete entries before it are intact"
        )


def _entries(lines: Iterable[bytes], path: Path) -> Iterator[tuple[str, int]]:
    """Yield (note, end offset) per complete entry: text lines, a blank line, signature lines,
    a blank line. Mid-file damage raises VerificationError; an incomplete tail TornEntryError."""
    text: list[str] = []
    sigs: list[str] | None = None  # None while reading the text
    pending: list[bytes] = []  # raw lines of the entry being read, to report if torn
    start = offset = 0
    start_line = 1
    for number, raw in enumerate(lines, start=1):
        offset += len(raw)
        pending.append(raw)
        if not raw.endswith(b"\n"):
            break  # an unterminated line can only be the last: torn
        try:
            line = raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationError(f"{path}:{number}: not valid UTF-8") from None
        if sigs is None:
            if line:
                text.append(line)
            elif text:
                sigs = []
            else:
                raise VerificationError(f"{path}:{number}: blank line where a note should start")
        elif line.startswith(SIG_PREFIX):
            sigs.append(line)
        elif line or not sigs:
            raise VerificationError(f"{path}:{number}: expected a signature line")
        else:
            yield "\n".join(text) + "\n\n" + "\n".join(sigs) + "\n", offset
            text, sigs, pending, start, start_line = [], None, [], offset, number + 1
    if pending:
        partial = b"".join(pending).decode("utf-8", "replace")
        raise TornEntryError(path, start_line, start, partial)


class CheckpointFile:
    """Append-only text file of signed notes, one per checkpoint, each followed by a blank line.

    It lives outside the database, so rewriting the database cannot rewrite history unseen.
    Each append is one write of the whole entry, fsync'd (and the directory fsync'd when the
    file is created). A crash can still leave a partial last entry: ``read`` reports it as
    ``TornEntryError`` rather than dropping it, and ``append`` refuses to write after it until
    ``discard_torn_tail`` has removed it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, note: str) -> None:
        _check_entry(note)
        data = note.encode("utf-8") + b"\n"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open checkpoint file: {exc.strerror}") from exc
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one appender at a time, across processes
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 2, size - 2) != b"\n\n":
                self._raise_damage()  # never write after a partial entry: it would corrupt both
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # leave no partial entry behind if we can help it
                raise
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append checkpoint: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if size == 0:
            fsync_directory(self.path.parent)

    def iter_notes(self) -> Iterator[str]:
        """Stream the notes in order; a missing file has none."""
        try:
            with self.path.open("rb") as f:
                for note, _ in _entries(f, self.path):
                    yield note
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read checkpoint file: {exc.strerror}") from exc

    def read(self) -> list[str]:
        notes: list[str] = []
        try:
            notes.extend(self.iter_notes())
        except TornEntryError as exc:
            exc.notes = notes
            raise
        return notes

    def _raise_damage(self) -> None:
        for _ in self.iter_notes():
            pass
        raise VerificationError(f"{self.path}: does not end with a complete entry")

    def discard_torn_tail(self) -> str | None:
        """Cut an incomplete last entry off the file and return its text (None if complete)."""
        try:
            for _ in self.iter_notes():
                pass
        except TornEntryError as exc:
            with self.path.open("r+b") as f:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                f.seek(exc.offset)
                removed = f.read()
                f.truncate(exc.offset)
                f.flush()
                os.fsync(f.fileno())
            return removed.decode("utf-8", "replace")
        return None


def _check_entry(note: str) -> None:
    """A note the file can hold and give back unchanged: text without blank lines, signed."""
    try:
        split_note(note)
    except ValueError as exc:
        raise ValueError(f"not a signed note: {exc}") from exc
    try:
        entries = list(_entries(io.BytesIO(note.encode("utf-8") + b"\n"), Path("<note>")))
    except VerificationError:
        entries = []
    if [n for n, _ in entries] != [note]:
        raise ValueError("a note with blank lines in its text cannot go in the checkpoint file")
