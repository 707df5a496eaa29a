"""RudderVirt's manifest validator: YAML text -> problems and a `Manifest` (plain Python).

Pipeline: load (limits, duplicate keys, positions) -> JSON Schema (draft 2020-12) ->
semantic checks -> frozen dataclasses with every default applied.

    result = validate(text)          # never raises for bad input
    result.valid, result.errors, result.warnings, result.manifest
    manifest = parse(text)           # raises ManifestInvalid listing the errors

Both hold the manifest to the host's caps, `limits` (DEFAULT_LIMITS unless told; the portal
passes its settings'); pass NO_LIMITS only to re-read a text that was accepted already.
"""

from __future__ import annotations

import logging

from ruddervirt.fetchpolicy import FetchPolicy
from ruddervirt.manifest.checks import semantic_problems
from ruddervirt.manifest.convert import to_manifest
from ruddervirt.manifest.limits import DEFAULT_LIMITS, NO_LIMITS, Limits
from ruddervirt.manifest.loader import MAX_BYTES, LoadError, PositionIndex, load
from ruddervirt.manifest.model import Manifest
from ruddervirt.manifest.problems import (
    ManifestInvalid,
    Problem,
    Severity,
    ValidationResult,
    sort_problems,
)
from ruddervirt.manifest.schema_check import schema, schema_problems

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_BYTES",
    "NO_LIMITS",
    "Limits",
    "Manifest",
    "ManifestInvalid",
    "Problem",
    "Severity",
    "ValidationResult",
    "parse",
    "schema",
    "validate",
]

logger = logging.getLogger(__name__)

MAX_PROBLEMS = 200  # per kind; the rest is summarised in one more problem


def validate(
    text: str | bytes, *, limits: Limits = DEFAULT_LIMITS, fetch_policy: FetchPolicy | None = None
) -> ValidationResult:
    """Check a manifest, values over `limits` included, and with `fetch_policy` every URL the
    build host would fetch (ruddervirt.fetchpolicy.url_refusal). Every problem found is
    reported at once (loading problems stop the rest: without data there is nothing to
    check). `manifest` is set when valid."""
    if not isinstance(text, str | bytes):
        return ValidationResult(errors=[Problem("", None, None, "expected manifest text")])
    try:
        loaded = load(text)
    except LoadError as exc:
        return ValidationResult(errors=sort_problems(exc.problems))
    except Exception:  # a bug in the loader: report it rather than fail the caller
        logger.exception("loading a manifest failed")
        return ValidationResult(errors=[_internal_error()])
    problems = schema_problems(loaded.data, loaded.index, limit=MAX_PROBLEMS + 1)
    problems += _semantic(
        loaded.data, loaded.index, limits, fetch_policy, schema_valid=not problems
    )
    errors = _capped([p for p in problems if p.severity is Severity.ERROR], "errors")
    warnings = _capped([p for p in problems if p.severity is Severity.WARNING], "warnings")
    manifest = None if errors else _convert(loaded.data)
    if manifest is None and not errors:
        errors = [_internal_error()]
    return ValidationResult(errors=errors, warnings=warnings, manifest=manifest)


def parse(text: str | bytes, *, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """The manifest, or ManifestInvalid with its errors (warnings are not reported)."""
    result = validate(text, limits=limits)
    if result.manifest is None:
        raise ManifestInvalid(result.errors)
    return result.manifest


def _semantic(
    data: dict[str, object],
    index: PositionIndex,
    limits: Limits,
    fetch_policy: FetchPolicy | None,
    *,
    schema_valid: bool,
) -> list[Problem]:
    try:
        return semantic_problems(data, index, limits, fetch_policy)
    except Exception:
        # The checks tolerate wrong types, so this is a bug in them; after schema errors the
        # user has something to fix anyway, otherwise say so rather than fail the request.
        logger.exception("semantic manifest checks failed")
        return [] if not schema_valid else [_internal_error()]


def _convert(data: dict[str, object]) -> Manifest | None:
    try:
        return to_manifest(data)
    except Exception:
        logger.exception("converting a valid manifest failed")
        return None


def _capped(problems: list[Problem], kind: str) -> list[Problem]:
    problems = sort_problems(problems)
    if len(problems) <= MAX_PROBLEMS:
        return problems
    severity = problems[0].severity
    note = f"too many {kind}: only the first {MAX_PROBLEMS} are listed"
    return [*problems[:MAX_PROBLEMS], Problem("", None, None, note, severity)]


def _internal_error() -> Problem:
    return Problem(
        "",
        None,
        None,
        "internal validator error (please report it); the manifest was not checked fully",
    )
