"""Provisioner step semantics on top of a guest session: `shell` scripts (the `reboot` step
lives in guest.ssh.reboot and is re-exported here).

Shell step (manifest: "one script per step ... when it has no shebang, it runs under bash (sh as
fallback) with set -e. env is exported. executeCommand wraps the run, with {{ .Command }}
replaced by the uploaded script's path"):

* A script without a shebang is uploaded behind a small header that makes the file itself carry
  the semantics, whoever executes it: ``#!/bin/sh``, re-exec under ``bash -e`` when bash exists,
  ``set -e`` (for the sh fallback), then ``export NAME='value'`` for every env entry. Putting
  the exports in the file is what lets env survive wrappers such as ``sudo`` (which resets the
  environment). Error line numbers in the script are shifted by the header's length
  (``PreparedScript.header_lines``).
* CRLF line endings are converted to LF (as Packer does), a leading UTF-8 BOM is dropped.
* A script with a shebang is uploaded as is and executed directly; env is exported by the
  command that runs it (use ``{{ .Vars }}`` in executeCommand to pass it through ``sudo``).
* executeCommand templates (Packer-compatible): ``{{ .Command }}`` and ``{{ .Path }}`` are the
  uploaded script's path, ``{{ .Vars }}`` the env assignments (``A='x' B='y'``; for PowerShell
  ``$env:A = 'x'; $env:B = 'y'``). Any other placeholder is an error.
* PowerShell guests (communicator.shell: powershell): the script gets a UTF-8 BOM (Windows
  PowerShell 5.1 reads BOM-less files in the ANSI code page) and ``$env:NAME = '...'`` lines,
  and runs with ``powershell -NoProfile -ExecutionPolicy Bypass -File <path>``.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ruddervirt.guest.communicator import OutputCallback, Session
from ruddervirt.guest.errors import GuestError, RebootFailed
from ruddervirt.guest.ssh.reboot import BOOT_ID_COMMAND, WINDOWS_BOOT_ID_COMMAND, reboot_and_wait

log = logging.getLogger(__name__)

BASH = "bash"
POWERSHELL = "powershell"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\Z")
_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
_REEXEC_GUARD = "RUDDER_SCRIPT_REEXEC"
_SHELL_HEADER = (
    "#!/bin/sh\n"
    "# Added by RudderVirt: a script without shebang runs under bash -e, or sh -e without bash.\n"
    f'if [ -z "${{{_REEXEC_GUARD}:-}}" ] && command -v bash >/dev/null 2>&1; then '
    f'{_REEXEC_GUARD}=1; export {_REEXEC_GUARD}; exec bash -e "$0" "$@"; fi\n'
    f"unset {_REEXEC_GUARD}\n"
    "set -e\n"
)
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class PreparedScript:
    """What a shell step uploads (``script_bytes`` to ``remote_path``, mode 0755) and runs."""

    remote_path: str
    script_bytes: bytes
    command: str
    cleanup_command: str
    header_lines: int = 0
    # POSIX guests: one command that writes the script from stdin, runs `command` and removes
    # the file, so a step costs one SSH round trip instead of three (upload, run, remove).
    one_shot_command: str | None = None


def build_shell_command(
    script: str | bytes,
    *,
    env: Mapping[str, str] | None = None,
    execute_command: str | None = None,
    shell: str = BASH,
    token: str | None = None,
) -> PreparedScript:
    """Prepare one shell step. ``token`` (default: random) makes the remote file name unique.

    Raises ValueError for invalid env names, NUL in values, or unknown template placeholders.
    """
    env = dict(env or {})
    for name, value in env.items():
        if not _NAME.match(name):
            raise ValueError(f"env name {name!r} is not a valid shell identifier")
        if "\0" in value:
            raise ValueError(f"env value of {name} contains a NUL character")
    body = script.encode("utf-8") if isinstance(script, str) else script
    body = body.removeprefix(_UTF8_BOM)  # a BOM would hide the shebang
    token = token or secrets.token_hex(8)
    if not _TOKEN.match(token):  # the path appears unquoted inside executeCommand templates
        raise ValueError(f"script token {token!r} must be letters, digits, '-' or '_'")
    if shell == POWERSHELL:
        return _powershell(body, env, execute_command, token)
    if shell != BASH:
        raise ValueError(f"unknown communicator shell {shell!r}")
    return _posix(body, env, execute_command, token)


def _posix(
    body: bytes, env: dict[str, str], execute_command: str | None, token: str
) -> PreparedScript:
    # A path in the guest; the random token keeps other guest users from pre-creating it.
    path = f"/tmp/rudder-script-{token}.sh"  # noqa: S108
    body = body.replace(b"\r\n", b"\n")  # Windows line endings break sh (Packer converts too)
    assignments = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    has_shebang = body.startswith(b"#!")
    if has_shebang:
        script, header_lines = body, 0
        # The file cannot carry the env, so the command exports it to whatever runs the file.
        prefix = f"export {' '.join(assignments)}; " if assignments else ""
        default = path
    else:
        header = _SHELL_HEADER + "".join(f"export {item}\n" for item in assignments)
        script, header_lines = header.encode("utf-8") + body, header.count("\n")
        prefix = ""
        default = f"sh {path}"  # through sh, not exec: works even where /tmp is mounted noexec
    wrapped = default
    if execute_command:
        wrapped = render_execute_command(
            execute_command, path=path, vars_text=" ".join(assignments)
        )
    command = prefix + wrapped
    return PreparedScript(
        remote_path=path,
        script_bytes=script,
        command=command,
        cleanup_command=f"rm -f {path}",
        header_lines=header_lines,
        one_shot_command=_one_shot(path, command),
    )


def _one_shot(path: str, command: str) -> str:
    """Write stdin to `path` (created under umask 077, then made 0755), run `command`, and
    remove the file on the way out, whatever the command does (the EXIT trap keeps the
    command's exit status)."""
    return (
        f"trap 'rm -f {path}' EXIT\n"
        f"(umask 077 && cat > {path} && chmod 0755 {path}) || "
        f'{{ echo "RudderVirt: cannot write the script to {path}" >&2; exit 125; }}\n'
        f"{command}\n"
    )


def _powershell(
    body: bytes, env: dict[str, str], execute_command: str | None, token: str
) -> PreparedScript:
    path = f"C:/Windows/Temp/rudder-script-{token}.ps1"
    assignments = [f"$env:{name} = {_ps_quote(value)}" for name, value in env.items()]
    header = "".join(f"{item}\r\n" for item in assignments)
    command = f"powershell -NoProfile -ExecutionPolicy Bypass -File {path}"
    if execute_command:
        command = render_execute_command(
            execute_command, path=path, vars_text="; ".join(assignments)
        )
    return PreparedScript(
        remote_path=path,
        script_bytes=_UTF8_BOM + header.encode("utf-8") + body,
        command=command,
        cleanup_command=(
            "powershell -NoProfile -Command "
            f"\"Remove-Item -Force -ErrorAction SilentlyContinue -LiteralPath '{path}'\""
        ),
        header_lines=len(assignments),
    )


def _ps_quote(value: str) -> str:
    """A PowerShell single-quoted string literal. PowerShell also treats the typographic
    single quotes as quote characters, so those are doubled too."""
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"


def render_execute_command(template: str, *, path: str, vars_text: str) -> str:
    """Substitute ``{{ .Command }}``/``{{ .Path }}`` (the script path) and ``{{ .Vars }}``."""
    values = {"Command": path, "Path": path, "Vars": vars_text}

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(
                f"executeCommand: unknown placeholder {match.group(0)}; "
                "use {{ .Command }}, {{ .Path }} or {{ .Vars }}"
            )
        return values[match.group(1)]

    return _PLACEHOLDER.sub(substitute, template)


def run_shell_script(
    session: Session,
    prepared: PreparedScript,
    *,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Upload, run and (best-effort) remove a prepared script; return the run's exit status.
    POSIX scripts do all three in one command (``one_shot_command``, the script on stdin).

    ``session`` is an SSH session or any Communicator. ``timeout`` bounds upload and run
    together. Raises what ``session.upload``/``run`` raise.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.1)

    if prepared.one_shot_command is not None:
        try:
            return session.run(
                prepared.one_shot_command,
                stdin=prepared.script_bytes,
                on_output=on_output,
                timeout=left(),
                cancel=cancel,
            )
        except BaseException:
            _cleanup(session, prepared)  # interrupted before the command removed the file
            raise
    try:
        session.upload(
            prepared.script_bytes, prepared.remote_path, mode=0o755, timeout=left(), cancel=cancel
        )
        return session.run(prepared.command, on_output=on_output, timeout=left(), cancel=cancel)
    finally:
        _cleanup(session, prepared)


def _cleanup(session: Session, prepared: PreparedScript) -> None:
    if not session.is_alive():
        return
    try:
        status = session.run(prepared.cleanup_command, timeout=15)
    except GuestError as exc:
        log.warning("could not remove %s: %s", prepared.remote_path, exc)
    else:
        if status != 0:
            log.warning("could not remove %s: exit status %s", prepared.remote_path, status)


__all__ = [
    "BOOT_ID_COMMAND",
    "WINDOWS_BOOT_ID_COMMAND",
    "PreparedScript",
    "RebootFailed",
    "build_shell_command",
    "reboot_and_wait",
    "render_execute_command",
    "run_shell_script",
]
