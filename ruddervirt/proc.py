"""Run external commands (qemu-img, genisoimage, ...) with a timeout and typed errors.

Contract: every external command in RudderVirt goes through :func:`run`. It takes a list of
arguments (never a shell string), always has a timeout, captures stdout/stderr as bytes and
turns every failure into a subclass of :class:`ExternalCommandError` whose message names the
command and shows the last lines of its stderr. Every program it runs must be declared in
scripts/packages.txt: with ``RUDDERVIRT_CHECK_PROGRAMS=1`` (the tests) an undeclared one raises
:class:`ruddervirt.programs.UndeclaredProgram` before it starts.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ruddervirt import programs

STDERR_TAIL_LINES = 10


class ExternalCommandError(Exception):
    """An external command could not be run to a successful end."""

    def __init__(self, cmd: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.cmd: list[str] = list(cmd)

    @property
    def program(self) -> str:
        """The command's name (basename of argv[0]), as shown in messages."""
        return Path(self.cmd[0]).name if self.cmd else "?"


class CommandFailed(ExternalCommandError):
    """The command exited with a non-zero status (or could not be started: returncode 127)."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        name = Path(cmd[0]).name if cmd else "?"
        message = f"{name} failed with exit status {returncode}"
        tail = stderr_tail(stderr)
        if tail:
            message += f": {tail}"
        super().__init__(cmd, message)

    def __reduce__(self) -> tuple[type, tuple[list[str], int, str]]:
        # Exceptions may cross process boundaries (job queues): keep them picklable.
        return (type(self), (self.cmd, self.returncode, self.stderr))


class CommandTimedOut(ExternalCommandError):
    """The command ran longer than its timeout and was killed."""

    def __init__(self, cmd: Sequence[str], timeout: float, stderr: str = "") -> None:
        self.timeout = timeout
        self.stderr = stderr
        name = Path(cmd[0]).name if cmd else "?"
        message = f"{name} timed out after {timeout:g} s"
        tail = stderr_tail(stderr)
        if tail:
            message += f": {tail}"
        super().__init__(cmd, message)

    def __reduce__(self) -> tuple[type, tuple[list[str], float, str]]:
        return (type(self), (self.cmd, self.timeout, self.stderr))


def stderr_tail(stderr: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``stderr``, joined with `` | `` for one-line logs."""
    kept = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def run(
    args: Sequence[str | Path],
    *,
    timeout: float,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` and return the completed process (stdout/stderr as bytes).

    ``env`` replaces the environment when given (``None`` inherits ours). stdin is ``input``,
    or empty so a command can never wait for a terminal. On a non-zero exit raises
    :class:`CommandFailed`; when ``timeout`` seconds pass the command is killed and
    :class:`CommandTimedOut` is raised. A missing executable is a ``CommandFailed`` with
    return code 127, like a shell would report.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    cmd = [os.fspath(arg) for arg in args]
    if not cmd:
        raise ValueError("no command given")
    programs.check(cmd)
    try:
        return subprocess.run(
            cmd,
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=True,
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    except subprocess.CalledProcessError as exc:
        raise CommandFailed(cmd, exc.returncode, _decode(exc.stderr)) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandTimedOut(cmd, timeout, _decode(exc.stderr)) from exc
    except (FileNotFoundError, PermissionError) as exc:
        # Raised when the executable (or cwd) is missing or not executable.
        raise CommandFailed(cmd, 127, f"cannot execute: {exc}") from exc
