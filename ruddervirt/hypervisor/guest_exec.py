"""guest-exec through a qemu-guest-agent, given only a way to send it one command.

The agent's protocol (qemu-ga's guest-exec / guest-exec-status, QEMU's qga/qapi-schema.json):
guest-exec starts a program with its arguments and answers with its guest pid at once;
guest-exec-status answers whether it exited, its exit code or signal and, with
capture-output, its stdout and stderr base64-encoded. This module polls that with a deadline
and kills what outlives it (a second guest-exec of kill -KILL), so a check can never hang a
worker. It imports no libvirt: ``libvirt_driver`` hands it ``send`` (qemuAgentCommand), the
unit tests a scripted agent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ruddervirt.hypervisor.driver import ExecResult, HypervisorError

# send(command as JSON text, timeout in whole seconds) -> the agent's reply as JSON text.
# Raises AgentNotAnswering when no agent answers, HypervisorError when it refuses.
Send = Callable[[str, int], str]

COMMAND_TIMEOUT_S = 5  # one agent round trip; a live agent answers in milliseconds
FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5
KILL = "/bin/kill"


class AgentNotAnswering(HypervisorError):
    """No guest agent answered (none installed, not started yet, the VM is off)."""


def run(
    send: Send,
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output: int,
    stdin: bytes = b"",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ExecResult:
    """Run `argv` in the guest and wait for it (at most `timeout_s`); see
    Hypervisor.guest_exec. Raises AgentNotAnswering or HypervisorError."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    if timeout_s <= 0 or max_output < 0:
        raise ValueError(f"bad timeout_s {timeout_s} or max_output {max_output}")
    deadline = clock() + timeout_s
    pid = _call(send, "guest-exec", _exec_args(argv, stdin))["pid"]
    pause = FIRST_POLL_S
    while True:
        status = _call(send, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            return _result(status, max_output, timed_out=False)
        if clock() >= deadline:
            _kill(send, pid)
            return _result(status, max_output, timed_out=True)
        sleep(min(pause, max(0.0, deadline - clock())))
        pause = min(pause * 2, MAX_POLL_S)


def _exec_args(argv: Sequence[str], stdin: bytes = b"") -> dict[str, Any]:
    """guest-exec's arguments; ``stdin`` reaches the program as its standard input."""
    arguments: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode("ascii")
    return arguments


def _call(send: Send, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
    reply = send(json.dumps({"execute": command, "arguments": arguments}), COMMAND_TIMEOUT_S)
    try:
        answer = json.loads(reply)["return"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HypervisorError(
            f"guest agent: unexpected answer to {command}: {reply[:200]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise HypervisorError(f"guest agent: unexpected answer to {command}: {reply[:200]!r}")
    return answer


def _kill(send: Send, pid: int) -> None:
    """Best effort: the check's time is up whether or not the kill works."""
    with contextlib.suppress(HypervisorError):
        _call(send, "guest-exec", _exec_args([KILL, "-KILL", str(pid)]))


def _result(status: dict[str, Any], max_output: int, *, timed_out: bool) -> ExecResult:
    stdout, cut_out = _data(status.get("out-data"), max_output)
    stderr, cut_err = _data(status.get("err-data"), max_output)
    agent_cut = bool(status.get("out-truncated") or status.get("err-truncated"))
    exited = bool(status.get("exited")) and not timed_out
    code = status.get("exitcode") if exited else None
    return ExecResult(
        exit_code=code if isinstance(code, int) else None,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        signal=status.get("signal") if isinstance(status.get("signal"), int) else None,
        truncated=cut_out or cut_err or agent_cut,
    )


def _data(encoded: object, limit: int) -> tuple[bytes, bool]:
    if not isinstance(encoded, str) or not encoded:
        return b"", False
    try:
        data = base64.b64decode(encoded, validate=False)
    except ValueError:
        return b"", False
    return data[:limit], len(data) > limit
