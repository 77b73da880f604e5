"""Problems found in a policy: each with where it is, a stable code, a message and a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Position:
    file: str
    line: int = 0  # 1-based; 0 when unknown (a whole-file problem)
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    position: Position
    code: str
    message: str
    severity: Severity = Severity.ERROR
    hint: str | None = None

    @property
    def file(self) -> str:
        return self.position.file

    @property
    def line(self) -> int:
        return self.position.line

    @property
    def column(self) -> int:
        return self.position.column

    def __str__(self) -> str:
        text = f"{self.position}: {self.severity}[{self.code}]: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest known spelling, if one is close enough."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        upper = {c.upper(): c for c in choices}
        if word.upper() in upper:
            close = [upper[word.upper()]]
    return f"did you mean '{close[0]}'?" if close else None


def sort_key(problem: Problem) -> tuple[str, int, int, str]:
    return (problem.position.file, problem.position.line, problem.position.column, problem.code)
