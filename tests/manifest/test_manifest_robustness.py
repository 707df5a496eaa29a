"""The checks never crash, whatever type a value has (the schema reports the type; the
semantic checks must tolerate it), and conversion never fails on data without errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ruddervirt.manifest.checks import semantic_problems
from ruddervirt.manifest.convert import to_manifest
from ruddervirt.manifest.limits import DEFAULT_LIMITS
from ruddervirt.manifest.loader import PositionIndex
from ruddervirt.manifest.problems import Severity
from ruddervirt.manifest.schema_check import schema_problems

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    Path(__file__).parent / "examples" / "reference.yaml",
    *sorted((ROOT / "examples").glob("*.yaml")),
]
WRONG_VALUES: list[object] = [None, True, -1, 2.5, "x", [], {"a": 1}, [{"a": 1}]]


def value_paths(value: object, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from value_paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from value_paths(child, (*path, i))


def replaced(data: object, path: tuple, value: object) -> object:
    data = copy.deepcopy(data)
    target = data
    for part in path[:-1]:
        target = target[part]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return data


@pytest.mark.parametrize("document", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_any_value_of_the_wrong_type_gives_problems_not_exceptions(document: Path) -> None:
    data = yaml.safe_load(document.read_text())
    index = PositionIndex()
    checked = 0
    for path in value_paths(data):
        for wrong in WRONG_VALUES if path else []:
            mutated = replaced(data, path, wrong)
            problems = schema_problems(mutated, index, limit=1000)
            problems += semantic_problems(mutated, index, DEFAULT_LIMITS)  # raises if not tolerant
            if not any(p.severity is Severity.ERROR for p in problems):
                to_manifest(mutated)  # type: ignore[arg-type]
            checked += 1
    assert checked > 300
