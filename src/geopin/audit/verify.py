"""Verifying the audit log from the bodies up, trusting nothing the database says about itself.

Every record body is re-canonicalised and re-hashed; the tree is rebuilt from those leaf hashes
(stored leaves are only used for pruned records) and its root compared, at each size, with every
checkpoint: the database's (signature checked with the public key), and the external checkpoint
file's. Stored Merkle nodes are compared with the rebuilt ones (proofs are made from them), and
the flat columns and rule rows with their bodies. The scan goes in chunks of sequence numbers,
so memory stays constant however long the log is.

What each finding means is in ``docs/audit.md``. A problem names the first sequence number it
concerns; the report's ``first_bad_seq`` is the lowest of them.
"""

from __future__ import annotations

import base64
import json
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from geopin.audit import merkle
from geopin.audit.canonical import canonical_json
from geopin.audit.checkpoint import VerifierKey
from geopin.audit.checkpoint_file import CheckpointFile, TornEntryError
from geopin.audit.db import translate_errors
from geopin.audit.records import flat_columns, rule_ids
from geopin.audit.schema import FLAT_FIELDS, checkpoints, nodes, record_rules, records
from geopin.audit.store import fetch_nodes
from geopin.errors import AuditError, VerificationError

_CHUNK = 2000
_MAX_PROBLEMS = 100  # enough to act on; the count goes on
_MAX_REORDER_LOOKUPS = 10
_LEAF_CODES = frozenset({"modified", "reordered", "inserted", "deleted"})


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the first sequence number concerned, None for a whole-log problem
    code: str  # stable: modified, column_mismatch, deleted, inserted, reordered, truncated, ...
    message: str


@dataclass
class VerifyReport:
    records: int = 0
    tree_size: int = 0
    db_checkpoints: int = 0
    file_checkpoints: int = 0
    signatures_checked: bool = False
    latest_checkpoint: int | None = None
    pruned: list[tuple[int, int]] = field(default_factory=list)  # inclusive seq ranges
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)
    bad_leaf_seqs: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    def add(self, seq: int | None, code: str, message: str) -> None:
        if seq is not None and code in _LEAF_CODES:
            self.bad_leaf_seqs.append(seq)
        self.problem_count += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(Problem(seq, code, message))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["bad_leaf_seqs"]
        out["ok"] = self.ok
        out["first_bad_seq"] = self.first_bad_seq
        out["pruned"] = [{"first": a, "last": b} for a, b in self.pruned]
        return out


@dataclass(frozen=True)
class _Expected:
    size: int
    root: bytes
    source: str  # "database checkpoint" or "checkpoint file note N"


def verify_log(
    engine: Engine,
    *,
    verifier: VerifierKey | None = None,
    checkpoint_file: str | None = None,
) -> VerifyReport:
    report = VerifyReport(signatures_checked=verifier is not None)
    if verifier is None:
        report.warnings.append(
            "no public key given: checkpoint signatures were not checked, so a rewritten log "
            "with recomputed checkpoints would pass; pass --public-key"
        )
    with translate_errors("verifying the audit log"):
        with engine.connect() as conn:
            expected = _db_checkpoints(conn, verifier, report)
            if checkpoint_file is not None:
                expected += _file_checkpoints(checkpoint_file, verifier, report)
            expected.sort(key=lambda e: e.size)
            _Scan(conn, report, expected).run()
    return report


def _db_checkpoints(
    conn: Connection, verifier: VerifierKey | None, report: VerifyReport
) -> list[_Expected]:
    out = []
    for row in conn.execute(sa.select(checkpoints).order_by(checkpoints.c.size)):
        report.db_checkpoints += 1
        where = f"database checkpoint {row.size}"
        try:
            size, root = _open_note(row.note, verifier)
        except VerificationError as exc:
            report.add(int(row.size), "checkpoint_signature", f"{where}: {exc}")
            continue
        if size != row.size or root != bytes(row.root):
            report.add(
                int(row.size),
                "checkpoint_mismatch",
                f"{where}: its columns (size {row.size}, root {_b64(row.root)}) differ from "
                f"its signed note (size {size}, root {_b64(root)})",
            )
        out.append(_Expected(size, root, where))
        report.latest_checkpoint = size
    return out


def _file_checkpoints(
    path: str, verifier: VerifierKey | None, report: VerifyReport
) -> list[_Expected]:
    notes = _read_checkpoint_file(path, report)
    out = []
    for number, note in enumerate(notes, 1):
        report.file_checkpoints += 1
        where = f"checkpoint file {path} note {number}"
        try:
            size, root = _open_note(note, verifier)
        except VerificationError as exc:
            report.add(None, "checkpoint_signature", f"{where}: {exc}")
            continue
        out.append(_Expected(size, root, where))
    if not notes:
        report.warnings.append(f"checkpoint file {path} holds no checkpoints")
    return out


def _read_checkpoint_file(path: str, report: VerifyReport) -> list[str]:
    """The complete notes of the file; a torn last entry, damage or a read failure becomes a
    finding (the notes before a torn or damaged entry are still checked)."""
    notes: list[str] = []
    try:
        notes.extend(CheckpointFile(path).iter_notes())
    except TornEntryError as exc:
        report.add(
            None,
            "checkpoint_file_torn",
            f"{exc.path}:{exc.line}: the last checkpoint entry (from byte {exc.offset}) is "
            f"incomplete, as a crash during its write leaves it; the {len(notes)} complete "
            "entries before it were checked, the next checkpoint appended removes it",
        )
    except VerificationError as exc:  # names the file and line
        report.add(
            None,
            "checkpoint_file_damaged",
            f"{exc}; the {len(notes)} entries before it were checked",
        )
    except AuditError as exc:
        report.add(None, "checkpoint_file", f"checkpoint file {path}: {exc}")
    return notes


def _open_note(note: str, verifier: VerifierKey | None) -> tuple[int, bytes]:
    if verifier is not None:
        checkpoint = verifier.open(note)
        return checkpoint.size, checkpoint.root
    # Without a key, read the note body (origin, size, base64 root) as written.
    lines = note.split("\n")
    try:
        return int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError) as exc:
        raise VerificationError(f"not a checkpoint note: {exc}") from exc


def _b64(value: bytes) -> str:
    return base64.b64encode(bytes(value)).decode()


class _Scan:
    """One pass over seq 0..end in chunks, rebuilding the tree."""

    def __init__(self, conn: Connection, report: VerifyReport, expected: list[_Expected]) -> None:
        self.conn = conn
        self.report = report
        self.expected = expected
        self.next_expected = 0
        self.frontier = merkle.Frontier.empty()
        self.prunes = self._prunes()
        self.reorder_lookups = 0

    def _prunes(self) -> list[tuple[int, str, int]]:
        out = []
        query = sa.select(records.c.seq, records.c.body).where(records.c.kind == "prune")
        for seq, body in self.conn.execute(query):
            if body is not None:
                prune = json.loads(body)
                out.append((int(seq), str(prune.get("before")), int(prune.get("seq_end", 0))))
        return out

    def run(self) -> None:
        conn, report = self.conn, self.report
        top_seq = conn.scalar(sa.select(sa.func.max(records.c.seq)))
        top_leaf = conn.scalar(sa.select(sa.func.max(nodes.c.idx)).where(nodes.c.level == 0))
        report.records = int(conn.scalar(sa.select(sa.func.count()).select_from(records)) or 0)
        end = (
            max(-1 if top_seq is None else int(top_seq), -1 if top_leaf is None else int(top_leaf))
            + 1
        )
        report.tree_size = end
        for lo in range(0, end, _CHUNK):
            self._chunk(lo, min(lo + _CHUNK, end))
        for exp in self.expected[self.next_expected :]:
            report.add(
                end,
                "truncated",
                f"{exp.source} covers {exp.size} records but the log ends at seq {end - 1}: "
                f"records from seq {end} were removed (log truncated)",
            )
        covered = report.latest_checkpoint or 0
        if self.expected:
            covered = max(covered, self.expected[-1].size)
        if end > covered:
            report.warnings.append(
                f"seq {covered}..{end - 1} not yet covered by a signed checkpoint"
            )

    def _chunk(self, lo: int, hi: int) -> None:
        conn = self.conn
        cols = [
            records.c.seq,
            records.c.record_id,
            records.c.body,
            *(records.c[f] for f in FLAT_FIELDS),
        ]
        rows = {
            int(r.seq): r
            for r in conn.execute(sa.select(*cols).where(records.c.seq >= lo, records.c.seq < hi))
        }
        leaves = {
            int(idx): bytes(h)
            for idx, h in conn.execute(
                sa.select(nodes.c.idx, nodes.c.hash).where(
                    nodes.c.level == 0, nodes.c.idx >= lo, nodes.c.idx < hi
                )
            )
        }
        rules: dict[int, list[str]] = {}
        for seq, rule in conn.execute(
            sa.select(record_rules.c.seq, record_rules.c.rule_id)
            .where(record_rules.c.seq >= lo, record_rules.c.seq < hi)
            .order_by(record_rules.c.seq, record_rules.c.rule_id)
        ):
            rules.setdefault(int(seq), []).append(rule)
        batch: list[bytes] = []
        completed: list[tuple[int, int, bytes]] = []
        for seq in range(lo, hi):
            batch.append(self._leaf(seq, rows.get(seq), leaves.get(seq), rules.get(seq, [])))
            exp = (
                self.expected[self.next_expected]
                if self.next_expected < len(self.expected)
                else None
            )
            if exp is not None and exp.size == seq + 1:
                self._extend(batch, completed)
                batch = []
                self._check_roots(seq + 1)
        self._extend(batch, completed)
        self._check_nodes(completed)

    def _extend(self, leaves: list[bytes], completed: list[tuple[int, int, bytes]]) -> None:
        if leaves:
            self.frontier, new = merkle.append(self.frontier, leaves)
            completed.extend(n for n in new if n[0] > 0)

    def _check_roots(self, size: int) -> None:
        root = self.frontier.root()
        while (
            self.next_expected < len(self.expected)
            and self.expected[self.next_expected].size == size
        ):
            exp = self.expected[self.next_expected]
            self.next_expected += 1
            if exp.root != root:
                self.report.add(
                    size - 1,
                    "checkpoint_mismatch",
                    f"{exp.source} (size {size}) has root {_b64(exp.root)} but the records give "
                    f"{_b64(root)}: the log or the checkpoint was rewritten",
                )
        # Several checkpoints may share a size; any at a size already passed were skipped.

    def _leaf(self, seq: int, row: Any, stored: bytes | None, rules: list[str]) -> bytes:
        report = self.report
        if row is None:
            if stored is None:
                report.add(
                    seq, "deleted", f"seq {seq}: the record and its leaf hash are missing (deleted)"
                )
                return merkle.leaf_hash(b"")  # keeps positions; the roots will not match
            report.add(
                seq,
                "deleted",
                f"seq {seq}: the record row is missing (deleted); its leaf hash remains",
            )
            return stored
        if row.body is None:
            self._pruned(seq, row, stored)
            return stored if stored is not None else merkle.leaf_hash(b"")
        # An edit by hand may leave the body as TEXT (SQLite) rather than bytes: still check it.
        body = (
            row.body.encode("utf-8", "surrogatepass")
            if isinstance(row.body, str)
            else bytes(row.body)
        )
        try:
            record = json.loads(body)
            canonical = canonical_json(record)
        except (ValueError, TypeError) as exc:
            report.add(seq, "modified", f"seq {seq}: the body is not a valid record ({exc})")
            return merkle.leaf_hash(body)
        if canonical != body:
            report.add(seq, "modified", f"seq {seq}: the body is not in canonical form (modified)")
        leaf = merkle.leaf_hash(canonical)
        if stored is None:
            report.add(
                seq,
                "inserted",
                f"seq {seq}: the record has no leaf hash: it was never sequenced (inserted)",
            )
        elif stored != leaf:
            report.add(seq, *self._leaf_mismatch(seq, leaf))
        self._columns(seq, row, record, rules)
        return leaf

    def _leaf_mismatch(self, seq: int, leaf: bytes) -> tuple[str, str]:
        if self.reorder_lookups < _MAX_REORDER_LOOKUPS:
            self.reorder_lookups += 1
            other = self.conn.scalar(
                sa.select(nodes.c.idx).where(nodes.c.level == 0, nodes.c.hash == leaf).limit(1)
            )
            if other is not None and int(other) != seq:
                return "reordered", (
                    f"seq {seq}: holds the record that was sequenced at seq {other} (reordered)"
                )
        return "modified", f"seq {seq}: the record body does not match its leaf hash (modified)"

    def _columns(self, seq: int, row: Any, record: dict[str, Any], rules: list[str]) -> None:
        try:
            want = flat_columns(record)
        except KeyError as exc:
            self.report.add(seq, "modified", f"seq {seq}: the body lacks {exc}")
            return
        want["record_id"] = record.get("id")
        for name, value in want.items():
            if getattr(row, name) != value:
                self.report.add(
                    seq,
                    "column_mismatch",
                    f"seq {seq}: column {name}={getattr(row, name)!r} but the body says {value!r} "
                    "(indexed column modified)",
                )
        if rules != rule_ids(record):
            self.report.add(
                seq,
                "column_mismatch",
                f"seq {seq}: rule rows {rules} but the body's rules are {rule_ids(record)}",
            )

    def _pruned(self, seq: int, row: Any, stored: bytes | None) -> None:
        report = self.report
        if stored is None:
            report.add(seq, "deleted", f"seq {seq}: pruned record has lost its leaf hash too")
        if not any(
            seq < seq_end and seq < at and row.ts < before for at, before, seq_end in self.prunes
        ):
            report.add(
                seq,
                "pruned_unrecorded",
                f"seq {seq}: the body was removed but no prune record covers it",
            )
        if report.pruned and report.pruned[-1][1] == seq - 1:
            report.pruned[-1] = (report.pruned[-1][0], seq)
        else:
            report.pruned.append((seq, seq))

    def _check_nodes(self, completed: list[tuple[int, int, bytes]]) -> None:
        if not completed:
            return
        stored = fetch_nodes(self.conn, [(lv, ix) for lv, ix, _ in completed])
        bad = self.report.bad_leaf_seqs  # ascending: the scan goes in seq order
        for level, index, digest in completed:
            have = stored.get((level, index))
            first = index << level
            last = first + (1 << level) - 1
            if (
                have is not None
                and bad
                and first <= bad[-1]
                and bad[bisect_left(bad, first)] <= last
            ):
                continue  # it differs because a leaf under it does: already reported
            if have != digest:
                what = (
                    "missing" if have is None else "differs from the tree rebuilt from the records"
                )
                self.report.add(
                    first,
                    "node_mismatch",
                    f"Merkle node ({level}, {index}) over seq {first}..{last} "
                    f"{what}: proofs made from it would fail",
                )


def format_report(report: VerifyReport) -> str:
    lines = [f"audit log: {report.records} records, tree size {report.tree_size}"]
    signed = "signatures checked" if report.signatures_checked else "signatures NOT checked"
    lines.append(
        f"checkpoints: {report.db_checkpoints} in the database, {report.file_checkpoints} in the "
        f"checkpoint file, {signed}; latest signed size {report.latest_checkpoint}"
    )
    for first, last in report.pruned:
        lines.append(f"pruned (bodies removed by a recorded prune): seq {first}..{last}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    for problem in report.problems:
        lines.append(f"FAIL [{problem.code}] {problem.message}")
    if report.problem_count > len(report.problems):
        lines.append(f"... and {report.problem_count - len(report.problems)} more problems")
    if report.ok:
        lines.append("OK: every record, node and checkpoint verifies")
    else:
        lines.append(
            f"FAILED: {report.problem_count} problems, first bad seq {report.first_bad_seq}"
        )
    return "\n".join(lines)
