"""Every schema and semantic rule, from the table in rule_cases.yaml: each broken once (the
error's path, line and message), manifests that follow them, and the warnings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ruddervirt.manifest import validate
from tests.manifest.cases import y

CASES = yaml.safe_load((Path(__file__).parent / "rule_cases.yaml").read_text("utf-8"))


def table(section: str, *keys: str) -> list:
    return [pytest.param(*(case[k] for k in keys), id=case["id"]) for case in CASES[section]]


def listing(problems: list) -> str:
    return "\n".join(str(p) for p in problems)


@pytest.mark.parametrize(
    ("text", "path", "line", "message"), table("errors", "yaml", "path", "line", "message")
)
def test_bad_manifest_reports_error_at_path_and_line(
    text: str, path: str, line: int, message: str
) -> None:
    result = validate(y(text))
    matches = [p for p in result.errors if p.path == path and message in p.message]
    assert matches, (
        f"no error at {path!r} containing {message!r}; errors:\n{listing(result.errors)}"
    )
    assert matches[0].line == line, listing(result.errors)
    assert matches[0].column is not None
    assert not result.valid
    assert result.manifest is None
    assert not any("internal validator error" in p.message for p in result.errors)


@pytest.mark.parametrize("text", table("valid", "yaml"))
def test_good_manifest_has_no_errors(text: str) -> None:
    result = validate(y(text))
    assert result.errors == [], listing(result.errors)
    assert result.valid
    assert result.manifest is not None


@pytest.mark.parametrize(
    ("text", "path", "line", "message"), table("warnings", "yaml", "path", "line", "message")
)
def test_questionable_manifest_warns_but_stays_valid(
    text: str, path: str, line: int, message: str
) -> None:
    result = validate(y(text))
    assert result.errors == [], listing(result.errors)
    assert result.manifest is not None
    matches = [w for w in result.warnings if w.path == path and message in w.message]
    assert matches, listing(result.warnings)
    assert matches[0].line == line
    assert matches[0].severity == "warning"


@pytest.mark.parametrize("text", table("clean", "yaml"))
def test_pinned_verified_manifest_has_no_warnings(text: str) -> None:
    result = validate(y(text))
    assert result.errors == []
    assert result.warnings == [], listing(result.warnings)


def test_case_ids_are_unique() -> None:
    ids = [case["id"] for section in CASES.values() for case in section]
    assert len(ids) == len(set(ids))


def test_every_error_of_a_document_is_reported_at_once() -> None:
    text = y("""
      timeout: soon
      vms:
        - name: Web
          source: {}
          resources: {cpu: 0}
      """)
    paths = {p.path for p in validate(text).errors}
    assert {"timeout", "vms[0].name", "vms[0].source", "vms[0].resources.cpu"} <= paths


def test_errors_come_in_document_order() -> None:
    text = y("""
      vms:
        - name: Web
          source: {}
      timeout: soon
      """)
    lines = [p.line for p in validate(text).errors]
    assert lines == sorted(lines)
