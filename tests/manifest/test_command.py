"""`manage.py validate_manifest PATH [--json]`: output and exit codes 0 / 1 / 2.

No database is needed: these tests are deliberately not marked `django_db`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ruddervirt.manifest import MAX_BYTES
from tests.manifest.cases import y

ROOT = Path(__file__).resolve().parents[2]

VALID = y("""
  vms:
    - name: web
      source: $SRC
  """)
WARNS = y("""
  vms:
    - name: web
      source: {url: 'https://images.example.edu/debian-12-20250210.qcow2'}
  """)
INVALID = y("""
  vms:
    - name: web
      source: {}
      resources: {memory: 10Mi}
  """)


@pytest.fixture(scope="module", autouse=True)
def django_ready() -> None:
    """Works with pytest-django (already set up) and without it (-p no:django)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ruddervirt.settings")
    django.setup()


def run(*args: str) -> tuple[int, str, str]:
    """call_command in-process: (exit code, stdout, stderr)."""
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("validate_manifest", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, content: str | bytes, name: str = "m.yaml") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def test_valid_manifest_exits_zero_with_a_summary(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    code, out, _ = run(path)
    assert code == 0
    assert out.splitlines() == [f"{path}: valid (0 errors, 0 warnings)"]


def test_warnings_are_printed_and_still_exit_zero(tmp_path: Path) -> None:
    path = write(tmp_path, WARNS)
    code, out, _ = run(path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"{path}:3:19: warning: vms[0].source.url: no `checksum`: downloads are not verified "
        "(add checksum: sha256:<hex>)"
    )
    assert lines[-1] == f"{path}: valid (0 errors, 1 warning)"


def test_invalid_manifest_exits_one_with_a_line_per_error(tmp_path: Path) -> None:
    path = write(tmp_path, INVALID)
    code, out, _ = run(path)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}:3:5: error: vms[0].source: a source needs exactly one of")
    assert lines[1].startswith(
        f"{path}:4:25: error: vms[0].resources.memory: expected at least 64Mi"
    )
    assert lines[-1] == f"{path}: invalid (2 errors, 0 warnings)"


def test_json_output_is_exactly_one_object(tmp_path: Path) -> None:
    code, out, _ = run(write(tmp_path, INVALID), "--json")
    assert code == 1
    data = json.loads(out)  # fails if there is anything but one JSON document
    assert data["valid"] is False
    assert data["warnings"] == []
    assert data["errors"][0] == {
        "path": "vms[0].source",
        "line": 3,
        "column": 5,
        "message": "a source needs exactly one of `url`, `blank` or `buildRef`, got none",
    }
    code, out, _ = run(write(tmp_path, WARNS, "w.yaml"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["valid"] is True
    assert data["errors"] == []
    assert set(data["warnings"][0]) == {"path", "line", "column", "message"}


def test_oversized_file_is_invalid_not_unreadable(tmp_path: Path) -> None:
    code, out, _ = run(write(tmp_path, VALID + "#" * MAX_BYTES), "--json")
    assert code == 1
    assert "the limit is 1048576 bytes" in json.loads(out)["errors"][0]["message"]


def unreadable_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {
        "missing": (str(tmp_path / "nope.yaml"), "No such file or directory"),
        "directory": (str(tmp_path), "it is a directory"),
        "not-utf8": (write(tmp_path, b"vms: [\xff]\n", "latin.yaml"), "not UTF-8"),
        "fifo": (str(fifo), "not a regular file"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not-utf8", "fifo"])
def test_unreadable_file_exits_two(tmp_path: Path, case: str) -> None:
    path, reason = unreadable_cases(tmp_path)[case]
    code, out, err = run(path)
    assert code == 2
    assert out == ""
    assert err.startswith(f"{path}: error: cannot read the file:")
    assert reason in err


@pytest.mark.parametrize("case", ["missing", "directory", "not-utf8", "fifo"])
def test_unreadable_file_in_json_is_an_error_without_line(tmp_path: Path, case: str) -> None:
    path, reason = unreadable_cases(tmp_path)[case]
    code, out, _ = run(path, "--json")
    assert code == 2
    data = json.loads(out)
    assert data["valid"] is False
    assert data["warnings"] == []
    (error,) = data["errors"]
    assert (error["path"], error["line"], error["column"]) == ("", None, None)
    assert reason in error["message"]


@pytest.mark.parametrize(("content", "expected"), [(VALID, 0), (INVALID, 1), (None, 2)])
def test_manage_py_exit_codes(tmp_path: Path, content: str | None, expected: int) -> None:
    path = write(tmp_path, content) if content is not None else str(tmp_path / "missing.yaml")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "ruddervirt.settings"}
    completed = subprocess.run(
        [sys.executable, "manage.py", "validate_manifest", path, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == expected, completed.stderr
    assert json.loads(completed.stdout)["valid"] is (expected == 0)
