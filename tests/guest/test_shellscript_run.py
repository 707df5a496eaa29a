"""Shell step semantics end to end against a real loopback SSH server."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from ruddervirt.guest.shellscript import build_shell_command, run_shell_script
from ruddervirt.guest.ssh import CommandTimeout, SSHTarget, wait_for_ssh
from ruddervirt.guest.ssh import exec as ssh_exec

pytestmark = pytest.mark.sshserver


@pytest.fixture(params=["sftp", "no-sftp"])
def any_session(request, server, server_without_sftp, keys):
    """A session to a server with SFTP, then to one without (upload falls back to cat)."""
    chosen = server if request.param == "sftp" else server_without_sftp
    target = SSHTarget(port=chosen.port, username="root", private_key=keys.private)
    with wait_for_ssh(target, timeout=10) as opened:
        yield opened


def run_step(session, script, **kwargs) -> tuple[int, list[str], str]:
    """Run a shell step; return (status, stdout lines, remote path)."""
    timeout = kwargs.pop("timeout", 20)
    prepared = build_shell_command(script, **kwargs)
    lines: list[str] = []

    def keep(stream: str, line: str) -> None:
        if stream == "stdout":
            lines.append(line)

    status = run_shell_script(session, prepared, on_output=keep, timeout=timeout)
    return status, lines, prepared.remote_path


def test_failing_middle_command_stops_a_script_without_shebang(any_session) -> None:
    status, lines, path = run_step(any_session, "echo one\nfalse\necho two\n")
    assert status == 1
    assert lines == ["one"]
    assert not Path(path).exists()  # removed afterwards


def test_script_without_shebang_runs_under_bash(session) -> None:
    status, lines, _ = run_step(session, '[[ 1 == 1 ]] && echo "bash ${BASH_VERSINFO[0]}"')
    assert status == 0
    assert lines[0].startswith("bash ")


def test_script_with_shebang_runs_under_its_interpreter_without_errexit(session) -> None:
    status, lines, _ = run_step(session, "#!/bin/sh\nfalse\necho still here\nexit 7\n")
    assert (status, lines) == (7, ["still here"])


def test_python_shebang_script(session) -> None:
    if shutil.which("python3") is None:
        pytest.skip("no python3 on this machine")
    script = "#!/usr/bin/env python3\nimport os\nprint(os.environ['NAME'][::-1])\n"
    status, lines, _ = run_step(session, script, env={"NAME": "abc"})
    assert (status, lines) == (0, ["cba"])


TRICKY = {
    "QUOTES": 'it\'s "quoted" and `backticked` $HOME $(id) \\ back',
    "SPACES": "  leading and trailing  ",
    "EMPTY": "",
    "NEWLINE": "line1\nline2",
}


def test_env_values_arrive_exactly(any_session) -> None:
    script = "".join(f'printf "%s|\\n" "${name}"\n' for name in TRICKY)
    status, lines, _ = run_step(any_session, script, env=TRICKY)
    expected = "|\n".join(TRICKY.values()) + "|"
    assert status == 0
    assert "\n".join(lines) == expected


def test_execute_command_wrapper_runs_the_script(session) -> None:
    status, lines, _ = run_step(
        session,
        'echo "wrapped $WHO"\nfalse\necho not reached\n',
        env={"WHO": "it's me"},
        execute_command="sh -c '{{ .Command }}'",
    )
    assert (status, lines) == (1, ["wrapped it's me"])


def test_env_survives_a_wrapper_that_resets_the_environment(session) -> None:
    # `env -i` clears the environment the way sudo's env_reset does.
    status, lines, _ = run_step(
        session,
        'echo "$SECRET_NAME"',
        env={"SECRET_NAME": "kept"},
        execute_command="env -i PATH=/usr/bin:/bin sh -c '{{ .Command }}'",
    )
    assert (status, lines) == (0, ["kept"])


def test_shebang_script_gets_env_through_vars_in_a_resetting_wrapper(session) -> None:
    status, lines, _ = run_step(
        session,
        '#!/bin/sh\necho "$A/$B"\n',
        env={"A": "x y", "B": "z"},
        execute_command="env -i {{ .Vars }} {{ .Path }}",
    )
    assert (status, lines) == (0, ["x y/z"])


def test_sh_fallback_over_ssh_when_bash_is_missing(session, workdir: Path) -> None:
    bin_dir = workdir / "nobash"
    bin_dir.mkdir()
    for tool in ("sh", "echo", "false", "rm"):
        os.symlink(shutil.which(tool) or f"/bin/{tool}", bin_dir / tool)
    script = 'if [ -n "${BASH_VERSION:-}" ]; then echo bash; else echo sh; fi\nfalse\necho after\n'
    status, lines, _ = run_step(
        session, script, execute_command=f"env PATH={bin_dir} sh {{{{ .Command }}}}"
    )
    assert (status, lines) == (1, ["sh"])


def test_step_timeout_fires_and_the_script_is_still_removed(server, keys) -> None:
    target = SSHTarget(port=server.port, username="root", private_key=keys.private)
    with wait_for_ssh(target, timeout=10) as session:
        prepared = build_shell_command("sleep 10\n")
        with pytest.raises(CommandTimeout):
            run_shell_script(session, prepared, timeout=0.4)
        assert not Path(prepared.remote_path).exists()


def test_a_posix_step_is_one_command_with_the_script_on_stdin(session, monkeypatch) -> None:
    """Write, run and remove in one SSH exec (no SFTP channel, no second exec)."""
    seen: list[str] = []
    real_exec = ssh_exec._exec

    def counting_exec(link, command, *args, **kwargs):
        seen.append(command)
        return real_exec(link, command, *args, **kwargs)

    monkeypatch.setattr(ssh_exec, "_exec", counting_exec)
    monkeypatch.setattr(
        type(session), "upload", lambda *a, **k: pytest.fail("the one-shot path must not upload")
    )
    prepared = build_shell_command(
        'read line || echo stdin-is-empty\nls -l "$0" | cut -c1-10\necho done\nexit 3\n',
        env={"X": "1"},
    )
    lines: list[str] = []
    status = run_shell_script(session, prepared, on_output=lambda _s, line: lines.append(line))
    assert status == 3  # the script's own status, through the EXIT trap
    assert lines == ["stdin-is-empty", "-rwxr-xr-x", "done"]
    assert len(seen) == 1
    assert not Path(prepared.remote_path).exists()


def test_a_script_that_cannot_be_written_says_so(session) -> None:
    prepared = build_shell_command("echo never\n")
    broken = dataclasses.replace(
        prepared,
        one_shot_command=prepared.one_shot_command.replace(
            prepared.remote_path, "/nonexistent-dir/script.sh"
        ),
    )
    lines: list[str] = []
    status = run_shell_script(session, broken, on_output=lambda _s, line: lines.append(line))
    assert status == 125
    assert "RudderVirt: cannot write the script to /nonexistent-dir/script.sh" in lines
    assert "never" not in lines
