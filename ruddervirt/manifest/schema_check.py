"""JSON Schema validation (draft 2020-12) with every error rewritten for people.

jsonschema's own messages ("'x' does not match '^[a-z0-9]...'") are replaced by what was
expected, from the schema's `x-expected` phrases, and placed with the position index.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from ruddervirt.manifest import paths
from ruddervirt.manifest.loader import PositionIndex
from ruddervirt.manifest.problems import Problem

_TYPE_PHRASES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


@cache
def schema() -> dict[str, object]:
    """The manifest's JSON Schema (parsed schema.json)."""
    text = resources.files("ruddervirt.manifest").joinpath("schema.json").read_text("utf-8")
    loaded: dict[str, object] = json.loads(text)
    return loaded


def _strict_pattern(
    validator: object, pattern: str, instance: object, schema: object
) -> Iterator[ValidationError]:
    """`pattern`, except that `$` does not accept a trailing newline as Python's re does:
    "web\\n" is not a DNS label (ECMA-262 regular expressions agree)."""
    if not isinstance(instance, str):
        return
    match = re.search(pattern, instance)
    anchored_end = pattern.endswith("$") and not pattern.endswith("\\$")
    if match is None or (anchored_end and match.end() != len(instance)):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


ManifestValidator = validators.extend(Draft202012Validator, {"pattern": _strict_pattern})


@cache
def _validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())
    return ManifestValidator(schema())


def schema_problems(data: object, index: PositionIndex, limit: int) -> list[Problem]:
    """Schema violations in `data` (about `limit` at most: a document of 50000 wrong list
    items needs no 50000 messages), as problems with paths, positions and messages."""
    return problems_against(_validator(), data, index, limit)


def validator_for(document_schema: dict[str, object]) -> Draft202012Validator:
    """A validator of another document kept the manifest's way (a rubric: ruddervirt.rubric),
    with the same strict `pattern`; its messages come from the same `x-expected` phrases."""
    Draft202012Validator.check_schema(document_schema)
    return ManifestValidator(document_schema)


def problems_against(
    validator: Draft202012Validator, data: object, index: PositionIndex, limit: int
) -> list[Problem]:
    """`schema_problems` for any validator (the manifest's or `validator_for`'s)."""
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        problems.extend(_rewrite(error, index))
        if len(problems) >= limit:
            break
    return problems


def _rewrite(error: ValidationError, index: PositionIndex) -> Iterator[Problem]:
    path = paths.join(error.absolute_path)
    instance = error.instance
    subschema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = list(subschema.get("properties", {}))
        for key in instance:
            if key not in allowed:
                key_path = paths.child(path, key)
                yield _at_key(index, key_path, _unknown_key(key, allowed))
    elif error.validator == "required" and isinstance(instance, dict):
        for key in _listed(error.validator_value):
            if key not in instance:
                yield _at(index, paths.child(path, key), f"required key {key!r} is missing", path)
    else:
        yield _at(index, path, _expected(error, subschema), path)


def _listed(value: object) -> list[Any]:
    """The array a ``required`` or ``enum`` keyword holds (JSON Schema makes both arrays)."""
    return value if isinstance(value, list) else []


def _at(index: PositionIndex, path: str, message: str, located_by: str) -> Problem:
    line, column = index.locate(located_by) or (None, None)
    return Problem(path, line, column, message)


def _at_key(index: PositionIndex, path: str, message: str) -> Problem:
    line, column = index.key(path) or (None, None)
    return Problem(path, line, column, message)


def _unknown_key(key: str, allowed: list[str]) -> str:
    message = f"unknown key {key!r} (expected one of: {', '.join(allowed)})"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def _expected(error: ValidationError, subschema: dict[str, object]) -> str:
    expected = subschema.get("x-expected")
    if expected is None:
        expected = _fallback_expectation(error, subschema)
    message = f"expected {expected}, got {describe(error.instance)}"
    wanted = subschema.get("type")
    if wanted == "string" and isinstance(error.instance, bool):
        message += " (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
    elif wanted == "string" and isinstance(error.instance, int | float | date):
        message += " (quote the value to make it a string)"
    return message


def _fallback_expectation(error: ValidationError, subschema: dict[str, object]) -> str:
    if error.validator == "type":
        types = (
            error.validator_value
            if isinstance(error.validator_value, list)
            else [error.validator_value]
        )
        return " or ".join(_TYPE_PHRASES.get(str(t), str(t)) for t in types)
    if error.validator == "enum":
        return "one of: " + ", ".join(str(v) for v in _listed(error.validator_value))
    # Not reached with our schema: every other keyword's subschema has an `x-expected`.
    return f"a value satisfying {error.validator} {error.validator_value!r}"


def describe(value: object) -> str:
    """A short human description of a YAML value, for "got ..." in messages."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return "an empty string" if not value else repr(shown)
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an empty mapping" if not value else "a mapping"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return f"a value of type {type(value).__name__}"
