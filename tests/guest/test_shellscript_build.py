"""build_shell_command: the generated text, and the header's interpreter choice run locally."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ruddervirt.guest.shellscript import build_shell_command, render_execute_command

SH_PATH = re.compile(r"/tmp/rudder-script-[0-9a-f]{16}\.sh")


def test_script_without_shebang_gets_the_header_env_and_runs_through_sh() -> None:
    prepared = build_shell_command("echo hi\n", env={"A": "x y", "B": "it's"})
    assert SH_PATH.fullmatch(prepared.remote_path)
    text = prepared.script_bytes.decode()
    assert text.startswith("#!/bin/sh\n")
    assert 'exec bash -e "$0" "$@"' in text
    assert "\nset -e\n" in text
    assert text.endswith("export A='x y'\nexport B='it'\"'\"'s'\necho hi\n")
    assert prepared.header_lines == text.count("\n") - 1
    assert prepared.command == f"sh {prepared.remote_path}"
    assert prepared.cleanup_command == f"rm -f {prepared.remote_path}"


def test_script_with_shebang_is_uploaded_unchanged_and_executed_directly() -> None:
    script = b"#!/usr/bin/env python3\nprint('hi')\n"
    prepared = build_shell_command(script)
    assert prepared.script_bytes == script
    assert prepared.command == prepared.remote_path
    assert prepared.header_lines == 0


def test_script_with_shebang_gets_env_from_the_command() -> None:
    prepared = build_shell_command("#!/bin/sh\nenv\n", env={"GREETING": "hello world"})
    assert prepared.command == f"export GREETING='hello world'; {prepared.remote_path}"


def test_crlf_and_bom_are_normalised_for_shell_scripts() -> None:
    prepared = build_shell_command(b"\xef\xbb\xbf#!/bin/bash\r\necho hi\r\n")
    assert prepared.script_bytes == b"#!/bin/bash\necho hi\n"


def test_every_step_gets_its_own_file_name() -> None:
    assert build_shell_command("true").remote_path != build_shell_command("true").remote_path


@pytest.mark.parametrize(
    "template",
    [
        "sudo sh -c '{{ .Command }}'",
        "sudo sh -c '{{.Command}}'",
        "sudo sh -c '{{ .Path }}'",
        "sudo sh -c '{{  .Command}}'",
    ],
)
def test_execute_command_placeholders_become_the_script_path(template: str) -> None:
    prepared = build_shell_command("true", execute_command=template, token="abc")
    assert prepared.command == "sudo sh -c '/tmp/rudder-script-abc.sh'"


def test_execute_command_vars_are_the_env_assignments() -> None:
    prepared = build_shell_command(
        "#!/bin/bash\ntrue\n",
        env={"A": "1", "B": "two words"},
        execute_command="sudo env {{ .Vars }} {{ .Path }}",
        token="t1",
    )
    assert prepared.command.endswith("sudo env A=1 B='two words' /tmp/rudder-script-t1.sh")


def test_unknown_placeholder_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{ \.Foo \}\}"):
        render_execute_command("run {{ .Foo }}", path="/p", vars_text="")


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "A;rm -rf /"])
def test_invalid_env_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid shell identifier"):
        build_shell_command("true", env={name: "x"})


def test_invalid_token_is_rejected() -> None:
    with pytest.raises(ValueError, match="token"):
        build_shell_command("true", token="../x")


def test_powershell_script_command_and_env() -> None:
    prepared = build_shell_command(
        "Write-Output $env:NAME\n",
        env={"NAME": "it's \u2019quoted\u2019 $x"},
        shell="powershell",
        token="abc123",
    )
    assert prepared.remote_path == "C:/Windows/Temp/rudder-script-abc123.ps1"
    assert prepared.command == (
        "powershell -NoProfile -ExecutionPolicy Bypass -File "
        "C:/Windows/Temp/rudder-script-abc123.ps1"
    )
    assert prepared.script_bytes.startswith(b"\xef\xbb\xbf")
    text = prepared.script_bytes[3:].decode()
    assert (
        text == "$env:NAME = 'it''s \u2019\u2019quoted\u2019\u2019 $x'\r\nWrite-Output $env:NAME\n"
    )
    assert "Remove-Item" in prepared.cleanup_command
    assert prepared.remote_path in prepared.cleanup_command


def test_powershell_execute_command_vars() -> None:
    prepared = build_shell_command(
        "dir",
        env={"A": "1", "B": "2"},
        shell="powershell",
        execute_command="powershell -Command \"{{ .Vars }}; & '{{ .Path }}'\"",
        token="t",
    )
    assert prepared.command == (
        "powershell -Command \"$env:A = '1'; $env:B = '2'; "
        "& 'C:/Windows/Temp/rudder-script-t.ps1'\""
    )


def test_unknown_shell_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown communicator shell"):
        build_shell_command("true", shell="fish")


# The header decides the interpreter at run time; check both branches on this machine.


def _run_locally(tmp_path: Path, script: str, path_dirs: str) -> subprocess.CompletedProcess[str]:
    prepared = build_shell_command(script, env={"MSG": "hello 'there'"})
    local = tmp_path / "script.sh"
    local.write_bytes(prepared.script_bytes)
    return subprocess.run(
        ["/bin/sh", str(local)],
        env={"PATH": path_dirs},
        capture_output=True,
        text=True,
        timeout=30,
    )


PROBE = (
    'if [ -n "${BASH_VERSION:-}" ]; then echo shell=bash; else echo shell=sh; fi\n'
    'echo "$MSG"\n'
    "false\n"
    "echo after\n"
)


def test_header_runs_the_script_under_bash_with_errexit(tmp_path: Path) -> None:
    result = _run_locally(tmp_path, PROBE, "/usr/bin:/bin")
    assert result.stdout.splitlines() == ["shell=bash", "hello 'there'"]
    assert result.returncode == 1


def test_header_falls_back_to_sh_with_errexit_when_bash_is_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with sh and the basics, but no bash
    bin_dir.mkdir()
    for tool in ("sh", "cat", "echo", "false"):
        os.symlink(shutil.which(tool) or f"/bin/{tool}", bin_dir / tool)
    result = _run_locally(tmp_path, PROBE, str(bin_dir))
    assert result.stdout.splitlines() == ["shell=sh", "hello 'there'"]
    assert result.returncode == 1
