"""What validation reports: problems (errors and warnings) and the overall result."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ruddervirt.manifest.model import Manifest


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding about a manifest.

    `path` names the offending value like `vms[0].provisioners[2].file.fileRef` ("" for the
    document as a whole); `line` and `column` are 1-based, None when the problem has no place
    in the text (an unreadable or oversized document).
    """

    path: str
    line: int | None
    column: int | None
    message: str
    severity: Severity = Severity.ERROR

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: {"path", "line", "column", "message"} (severity is implied by
        the list the problem is in)."""
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line is not None:
            where += f" (line {self.line}, column {self.column})"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of `validate()`: `manifest` is set exactly when there are no errors."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def valid(self) -> bool:
        return not self.errors


class ManifestInvalid(ValueError):
    """Raised by `parse()`; `problems` holds the errors (never empty)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"the manifest has {len(self.problems)} error(s):\n{lines}")


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Document order (problems without a position first), duplicates removed."""
    unique = list(dict.fromkeys(problems))
    return sorted(
        unique,
        key=lambda p: (p.line is not None, p.line or 0, p.column or 0, p.path),
    )
