"""`manage.py validate_manifest PATH [--json]`: check a manifest file from the shell.

Exit status: 0 valid (warnings allowed), 1 invalid, 2 the file cannot be read (missing, a
directory or other non-regular file, unreadable, not UTF-8).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from modules.limits import manifest_limits
from ruddervirt.fetch_settings import portal_fetch_policy
from ruddervirt.manifest import MAX_BYTES, Problem, validate

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


class Unreadable(Exception):
    pass


class Command(BaseCommand):
    help = "Validate a module manifest (YAML); exit 0 valid, 1 invalid, 2 unreadable."
    requires_system_checks: list[str] = []  # a file check needs neither models nor a database

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the manifest file")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: object) -> None:
        path = str(options["path"])
        as_json = bool(options["json"])
        try:
            content = _read(Path(path))
        except Unreadable as exc:
            self._report_unreadable(path, str(exc), as_json)
            raise SystemExit(EXIT_UNREADABLE) from None
        result = validate(content, limits=manifest_limits(), fetch_policy=portal_fetch_policy())
        if as_json:
            self.stdout.write(
                json.dumps(_result_json(result.valid, result.errors, result.warnings))
            )
        else:
            self._print_human(path, result.errors, result.warnings)
        if not result.valid:
            raise SystemExit(EXIT_INVALID)

    def _report_unreadable(self, path: str, reason: str, as_json: bool) -> None:
        if as_json:
            problem = Problem("", None, None, f"cannot read {path}: {reason}")
            self.stdout.write(json.dumps(_result_json(False, [problem], [])))
        else:
            self.stderr.write(f"{path}: error: cannot read the file: {reason}")

    def _print_human(self, path: str, errors: list[Problem], warnings: list[Problem]) -> None:
        for severity, problems in (("error", errors), ("warning", warnings)):
            for problem in problems:
                self.stdout.write(_human_line(path, severity, problem))
        counts = f"{_plural(len(errors), 'error')}, {_plural(len(warnings), 'warning')}"
        verdict = "invalid" if errors else "valid"
        self.stdout.write(f"{path}: {verdict} ({counts})")


def _read(path: Path) -> str | bytes:
    """The file's text; bytes (left for the validator to reject) when it exceeds the size
    limit. Reads at most the limit + 1 byte, so a huge file or device cannot exhaust memory."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise Unreadable("it is a directory")
        if not stat.S_ISREG(mode):
            raise Unreadable("it is not a regular file")
        with path.open("rb") as handle:
            content = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    if len(content) > MAX_BYTES:
        return content
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"it is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _human_line(path: str, severity: str, problem: Problem) -> str:
    where = f"{path}:{problem.line}:{problem.column}" if problem.line is not None else path
    subject = f"{problem.path}: " if problem.path else ""
    return f"{where}: {severity}: {subject}{problem.message}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _result_json(valid: bool, errors: list[Problem], warnings: list[Problem]) -> dict[str, object]:
    return {
        "valid": valid,
        "errors": [p.to_dict() for p in errors],
        "warnings": [p.to_dict() for p in warnings],
    }
