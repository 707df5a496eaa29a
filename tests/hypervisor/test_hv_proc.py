"""ruddervirt.proc.run: typed errors, stderr tails, timeouts."""

from __future__ import annotations

import pickle
import time

import pytest

from ruddervirt import programs
from ruddervirt.proc import CommandFailed, CommandTimedOut, ExternalCommandError, run


def test_run_returns_captured_stdout() -> None:
    result = run(["echo", "hello"], timeout=10)
    assert result.stdout == b"hello\n"
    assert result.returncode == 0


def test_run_feeds_input_to_stdin() -> None:
    assert run(["cat"], timeout=10, input=b"abc").stdout == b"abc"


def test_run_gives_empty_stdin_when_no_input() -> None:
    # A command reading stdin must see EOF at once instead of hanging until the timeout.
    assert run(["cat"], timeout=10).stdout == b""


def test_failure_raises_command_failed_with_name_status_and_stderr() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", "echo first >&2; echo boom >&2; exit 3"], timeout=10)
    error = caught.value
    assert isinstance(error, ExternalCommandError)
    assert error.returncode == 3
    assert error.cmd[0] == "sh"
    assert "boom" in error.stderr
    assert str(error).startswith("sh failed with exit status 3")
    assert "boom" in str(error)


def test_failure_message_keeps_only_the_last_stderr_lines() -> None:
    script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 1"
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", script], timeout=10)
    message = str(caught.value)
    assert "line30" in message
    assert "line21" in message
    assert "line20 " not in message + " "
    assert "line1 " not in message + " "


def test_timeout_kills_the_command_and_raises_command_timed_out() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, ExternalCommandError)
    assert caught.value.timeout == 0.3
    assert "sleep timed out after 0.3 s" in str(caught.value)


def test_missing_executable_is_command_failed_127() -> None:
    with pytest.raises(CommandFailed) as caught, programs.allow_undeclared("rv-no-such-tool"):
        run(["/nonexistent/rv-no-such-tool", "--x"], timeout=10)
    assert caught.value.returncode == 127
    assert "rv-no-such-tool" in str(caught.value)


def test_run_requires_a_positive_timeout() -> None:
    with pytest.raises(ValueError):
        run(["true"], timeout=0)


def test_errors_survive_pickling() -> None:
    failed = CommandFailed(["qemu-img", "info"], 1, "bad image")
    copy = pickle.loads(pickle.dumps(failed))
    assert (copy.cmd, copy.returncode, copy.stderr, str(copy)) == (
        failed.cmd,
        1,
        "bad image",
        str(failed),
    )
    timed_out = pickle.loads(pickle.dumps(CommandTimedOut(["genisoimage"], 5.0)))
    assert timed_out.timeout == 5.0
