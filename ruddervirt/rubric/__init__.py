"""Rubrics: the checks an instructor runs inside students' VMs (plain Python).

A rubric is its own YAML document, kept by the portal beside a module (never part of the
manifest: the manifest format does not change). It is read the manifest's way: the same
loader (limits, duplicate keys, positions), a JSON Schema with the same people-friendly
messages, then semantic checks, so every problem has a path and a line:

    result = validate(text)               # never raises for bad input
    result.valid, result.errors, result.warnings, result.rubric

    studentCanRun: true                   # students may press "Check my work"
    checks:
      - name: page changed                # unique; what students and the gradebook see
        vm: server                        # the clone VM it runs in
        run: grep -q student /srv/www/index.html     # /bin/sh -c RUN, in the guest
        expect: {exitCode: 0}             # or {stdoutMatches: REGEX}
        timeout: 30s                      # default 30s, at most MAX_TIMEOUT_S
        points: 5                         # default 1
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from ruddervirt.manifest import paths
from ruddervirt.manifest.loader import LoadError, PositionIndex, load
from ruddervirt.manifest.problems import Problem, Severity, sort_problems
from ruddervirt.manifest.schema_check import problems_against, validator_for
from ruddervirt.manifest.units import parse_duration

__all__ = [
    "MAX_BYTES",
    "MAX_CHECKS",
    "MAX_OUTPUT_BYTES",
    "MAX_TIMEOUT_S",
    "Check",
    "Rubric",
    "RubricResult",
    "validate",
]

MAX_BYTES = 64 * 1024
MAX_CHECKS = 50
MAX_POINTS = 1000
MAX_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 30.0
MAX_RUN_CHARS = 4096
MAX_PATTERN_CHARS = 500
# What is kept of a check's stdout and of its stderr (each), and what stdoutMatches reads.
MAX_OUTPUT_BYTES = 4096
MAX_PROBLEMS = 100

_DURATION = r"^(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$"
_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["checks"],
    "properties": {
        "studentCanRun": {"type": "boolean"},
        "checks": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_CHECKS,
            "x-expected": f"a list of 1 to {MAX_CHECKS} checks",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "vm", "run", "expect"],
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 100,
                        "x-expected": "a name of 1 to 100 characters",
                    },
                    "vm": {
                        "type": "string",
                        "pattern": _DNS_LABEL,
                        "x-expected": "the name of one of the module's VMs (a DNS label)",
                    },
                    "run": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_RUN_CHARS,
                        "x-expected": f"a shell command of 1 to {MAX_RUN_CHARS} characters",
                    },
                    "expect": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "maxProperties": 1,
                        "x-expected": "exactly one of exitCode or stdoutMatches",
                        "properties": {
                            "exitCode": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 255,
                                "x-expected": "an exit status from 0 to 255",
                            },
                            "stdoutMatches": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_PATTERN_CHARS,
                                "x-expected": (
                                    f"a regular expression of 1 to {MAX_PATTERN_CHARS} characters"
                                ),
                            },
                        },
                    },
                    "timeout": {
                        "type": "string",
                        "pattern": _DURATION,
                        "x-expected": "a duration such as 30s or 2m",
                    },
                    "points": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_POINTS,
                        "x-expected": f"a whole number of points from 0 to {MAX_POINTS}",
                    },
                },
            },
        },
    },
}

_validator = validator_for(SCHEMA)


@dataclass(frozen=True)
class Check:
    """One check: `run` in `vm` with /bin/sh -c, passed when `exit_code` (if set) is the
    command's exit status, or `stdout_matches` (if set) is found in its stdout (re.search,
    MULTILINE), within `timeout_s`."""

    name: str
    vm: str
    run: str
    points: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    exit_code: int | None = None
    stdout_matches: str | None = None

    @property
    def argv(self) -> list[str]:
        """What the guest agent executes: the command is an argument, never spliced."""
        return ["/bin/sh", "-c", self.run]

    def passed(self, exit_code: int | None, stdout: str) -> bool:
        if self.stdout_matches is not None:
            return re.search(self.stdout_matches, stdout, re.MULTILINE) is not None
        return exit_code is not None and exit_code == self.exit_code


@dataclass(frozen=True)
class Rubric:
    checks: tuple[Check, ...]
    student_can_run: bool = False

    @property
    def max_score(self) -> int:
        return sum(check.points for check in self.checks)


@dataclass(frozen=True)
class RubricResult:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    rubric: Rubric | None = None

    @property
    def valid(self) -> bool:
        return not self.errors


def validate(text: str | bytes, *, vms: Collection[str] | None = None) -> RubricResult:
    """Check a rubric. With `vms` (the VM names of the module's manifest), a check naming
    another VM is a warning (a version built later may have it; at run time it fails)."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_BYTES:
        message = f"a rubric may be at most {MAX_BYTES // 1024} KiB (this one is {size} bytes)"
        return RubricResult(errors=[Problem("", None, None, message)])
    try:
        loaded = load(text)
    except LoadError as exc:
        return RubricResult(errors=sort_problems(exc.problems))
    problems = problems_against(_validator, loaded.data, loaded.index, MAX_PROBLEMS)
    if problems:
        return RubricResult(errors=sort_problems(problems))
    problems = _semantic(loaded.data, loaded.index, vms)
    errors = sort_problems([p for p in problems if p.severity is Severity.ERROR])
    warnings = sort_problems([p for p in problems if p.severity is Severity.WARNING])
    rubric = None if errors else _to_rubric(loaded.data)
    return RubricResult(errors=errors, warnings=warnings, rubric=rubric)


def parse(text: str | bytes) -> Rubric:
    """The rubric of a text accepted before (ValueError listing the errors otherwise)."""
    result = validate(text)
    if result.rubric is None:
        raise ValueError("; ".join(str(p) for p in result.errors))
    return result.rubric


def _semantic(
    data: dict[str, object], index: PositionIndex, vms: Collection[str] | None
) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    checks = data["checks"]
    assert isinstance(checks, list)  # the schema says so
    for number, check in enumerate(checks):
        path = paths.child("checks", number)
        name = check["name"]
        if name in seen:
            problems.append(_at(index, f"{path}.name", f"another check is named {name!r}"))
        seen.add(name)
        pattern = check["expect"].get("stdoutMatches")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                message = f"not a regular expression: {exc}"
                problems.append(_at(index, f"{path}.expect.stdoutMatches", message))
        timeout = check.get("timeout")
        if timeout is not None and not 1 <= parse_duration(timeout) <= MAX_TIMEOUT_S:
            message = f"expected a timeout from 1s to {MAX_TIMEOUT_S:g}s, got {timeout!r}"
            problems.append(_at(index, f"{path}.timeout", message))
        if vms is not None and check["vm"] not in vms:
            known = ", ".join(sorted(vms)) or "none"
            message = f"the module's manifest has no VM {check['vm']!r} (it has: {known})"
            problems.append(_at(index, f"{path}.vm", message, Severity.WARNING))
    return problems


def _at(
    index: PositionIndex, path: str, message: str, severity: Severity = Severity.ERROR
) -> Problem:
    line, column = index.locate(path) or (None, None)
    return Problem(path, line, column, message, severity)


def _to_rubric(data: dict[str, object]) -> Rubric:
    checks = data["checks"]
    assert isinstance(checks, list)
    return Rubric(
        checks=tuple(
            Check(
                name=c["name"],
                vm=c["vm"],
                run=c["run"],
                points=c.get("points", 1),
                timeout_s=parse_duration(c["timeout"]) if "timeout" in c else DEFAULT_TIMEOUT_S,
                exit_code=c["expect"].get("exitCode"),
                stdout_matches=c["expect"].get("stdoutMatches"),
            )
            for c in checks
        ),
        student_can_run=bool(data.get("studentCanRun", False)),
    )
