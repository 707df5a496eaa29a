"""A scripted :class:`~ruddervirt.guest.communicator.Communicator` for unit tests.

A test writes down the calls it expects the engine to make, in order, and what each one does:
the output lines and exit status of a command, how long a call takes, a connection that drops,
a reboot that takes N seconds, a guest that never answers. ``ScriptedCommunicator`` plays the
script and raises the real communicator's errors (``guest.errors``) in the same situations:

- a call that takes longer than its ``timeout`` waits that long, then raises CommandTimeout
  (``run``, ``upload``), WaitTimeout (``wait``) or RebootFailed (``reboot``); the session
  survives a command timeout, as it does over SSH;
- a cancel event set during a call raises Cancelled at once;
- ``drop`` ends the session: the call raises ConnectionLost and ``is_alive`` turns False;
- ``run``/``upload``/``reboot`` without a session raise GuestError, as SSHCommunicator does.

A call the script does not expect raises :class:`ScriptMismatch` (an AssertionError, so it is
never mistaken for a guest failure); ``assert_done`` checks that every step was played.
Delays are real seconds: keep them small. Thread-safe enough for one VM thread plus a test
thread that sets cancel events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.guest.communicator import AttemptCallback, Endpoint, OutputCallback
from ruddervirt.guest.errors import (
    Cancelled,
    CommandTimeout,
    ConnectionLost,
    GuestError,
    RebootFailed,
    WaitTimeout,
)

FAKE_HOST_KEY = "SHA256:fake-host-key"


class ScriptMismatch(AssertionError):
    """The engine made a call the script did not expect (or not the one expected next)."""


@dataclass(frozen=True)
class Step:
    """One expected call and what it does; build them with the functions below."""

    op: str  # wait, run, upload, reboot or power_off
    match: str = ""  # run: in the command or its stdin; upload: in the remote path
    output: tuple[tuple[str, str], ...] = ()  # (stream, line) sent to on_output
    exit_status: int = 0
    delay: float = 0.0  # seconds the call takes (bounded by the call's timeout)
    drop: bool = False  # the connection drops at the end of the delay
    error: BaseException | None = None  # raised at the end of the delay
    then: Callable[[], None] | None = field(default=None, compare=False)  # after success


@dataclass(frozen=True)
class Call:
    """One call the engine made: ``what`` is the command or the remote path."""

    op: str
    what: str = ""
    data: bytes = b""  # run: stdin; upload: the content
    timeout: float | None = None
    mode: int | None = None


def wait(*, delay: float = 0.0, error: BaseException | None = None) -> Step:
    """The guest accepts a session after ``delay`` s (or ``error`` is raised)."""
    return Step("wait", delay=delay, error=error)


def never_answers() -> Step:
    """A guest that never accepts a session: ``wait`` times out."""
    return Step("wait", delay=float("inf"))


def run(
    match: str = "",
    *stdout: str,
    exit_status: int = 0,
    stderr: Sequence[str] = (),
    delay: float = 0.0,
    then: Callable[[], None] | None = None,
) -> Step:
    """A command containing ``match`` (in its text or stdin) prints ``stdout`` then ``stderr``
    lines and exits with ``exit_status`` after ``delay`` s."""
    lines = tuple(("stdout", line) for line in stdout) + tuple(("stderr", ln) for ln in stderr)
    return Step("run", match, lines, exit_status, delay, then=then)


def drop_connection(match: str = "", *stdout: str, delay: float = 0.0) -> Step:
    """A command containing ``match`` prints ``stdout``, then the connection drops."""
    return Step("run", match, tuple(("stdout", line) for line in stdout), delay=delay, drop=True)


def upload(match: str = "", *, delay: float = 0.0, error: BaseException | None = None) -> Step:
    """An upload to a path containing ``match``."""
    return Step("upload", match, delay=delay, error=error)


def reboot(*, takes: float = 0.0, error: BaseException | None = None) -> Step:
    """A reboot after which the guest is back in ``takes`` s."""
    return Step("reboot", delay=takes, error=error)


def power_off(*, then: Callable[[], None] | None = None) -> Step:
    """The guest is asked to power off; ``then`` (e.g. the fake hypervisor's domain turning
    SHUTOFF) runs afterwards."""
    return Step("power_off", then=then)


class ScriptedCommunicator:
    """Plays ``script`` (see the module docstring); ``calls`` records what the engine did."""

    def __init__(self, script: Iterable[Step], *, endpoint: Endpoint | None = None) -> None:
        self.endpoint = endpoint
        self.script: list[Step] = list(script)
        self.calls: list[Call] = []
        self.sessions = 0  # sessions opened by wait()
        self.reboots = 0
        self._alive = False
        self._lock = threading.Lock()

    # -- for tests --------------------------------------------------------------------------

    def assert_done(self) -> None:
        """Raise ScriptMismatch unless every scripted step was played."""
        if self.script:
            left = ", ".join(f"{s.op}({s.match!r})" for s in self.script)
            raise ScriptMismatch(f"the engine stopped before these scripted calls: {left}")

    def commands(self) -> list[str]:
        return [c.what for c in self.calls if c.op == "run"]

    # -- the protocol -----------------------------------------------------------------------

    @property
    def host_key(self) -> str:
        return FAKE_HOST_KEY if self._alive else ""

    def wait(
        self,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> None:
        self._alive = False
        step = self._next(Call("wait", timeout=timeout), "")
        if step.delay > timeout:
            if on_attempt is not None:
                on_attempt("no TCP connection to the fake guest (connection refused)")
            self._pause(timeout, cancel)
            raise WaitTimeout(
                f"fake guest not ready after {timeout:.1f}s",
                reason="connection refused",
                elapsed=timeout,
                attempts=1,
            )
        self._pause(step.delay, cancel)
        self._fail_if(step)
        self._alive = True
        self.sessions += 1
        self._done(step)

    def run(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        data = stdin.read_bytes() if isinstance(stdin, Path) else (stdin or b"")
        self._need_session("running a command")
        call = Call("run", command, data, timeout)
        step = self._next(call, command + "\n" + data.decode("utf-8", "replace"))
        self._take(step, timeout, cancel, f"command timed out after {timeout}s: {command}")
        for stream, line in step.output:
            if on_output is not None:
                on_output(stream, line)
        self._end_of(step, f"connection to the fake guest lost while running {command[:200]}")
        return step.exit_status

    def upload(
        self,
        data: bytes | Path,
        remote_path: str,
        *,
        mode: int = 0o644,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        content = data.read_bytes() if isinstance(data, Path) else data  # OSError as over SSH
        self._need_session("an upload")
        step = self._next(Call("upload", remote_path, content, timeout, mode), remote_path)
        self._take(step, timeout, cancel, f"upload to {remote_path} timed out after {timeout}s")
        self._end_of(step, f"connection to the fake guest lost during the upload to {remote_path}")

    def reboot(
        self,
        command: str,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        self._need_session("a reboot")
        step = self._next(Call("reboot", command, timeout=timeout), command)
        if step.delay > timeout:
            self._pause(timeout, cancel)
            self._alive = False
            raise RebootFailed("the guest did not reboot in time (its boot id did not change)")
        self._pause(step.delay, cancel)
        self._fail_if(step)
        self.reboots += 1
        self._done(step)

    def power_off(
        self, command: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> None:
        self._need_session("powering off")
        step = self._next(Call("power_off", command, timeout=timeout), command)
        self._alive = False
        self._pause(min(step.delay, timeout), cancel)
        self._fail_if(step)
        self._done(step)

    def is_alive(self) -> bool:
        return self._alive

    def close(self) -> None:
        self._alive = False

    # -- playing the script -----------------------------------------------------------------

    def _next(self, call: Call, text: str) -> Step:
        with self._lock:
            self.calls.append(call)
            if not self.script:
                raise ScriptMismatch(f"unexpected {call.op}({call.what[:200]!r}): script is over")
            step = self.script[0]
            if step.op != call.op or step.match not in text:
                raise ScriptMismatch(
                    f"expected {step.op}({step.match!r}), got {call.op}({call.what[:300]!r})"
                )
            return self.script.pop(0)

    def _need_session(self, doing: str) -> None:
        if not self._alive:
            raise GuestError(f"no session to the fake guest for {doing}: wait for it first")

    def _take(
        self, step: Step, timeout: float | None, cancel: threading.Event | None, message: str
    ) -> None:
        """Spend the step's delay; CommandTimeout when it is longer than ``timeout``."""
        if timeout is not None and step.delay > timeout:
            self._pause(timeout, cancel)
            raise CommandTimeout(message)
        self._pause(step.delay, cancel)

    def _end_of(self, step: Step, lost: str) -> None:
        if step.drop:
            self._alive = False
            raise ConnectionLost(lost)
        self._fail_if(step)
        self._done(step)

    @staticmethod
    def _fail_if(step: Step) -> None:
        if step.error is not None:
            raise step.error

    @staticmethod
    def _done(step: Step) -> None:
        if step.then is not None:
            step.then()

    @staticmethod
    def _pause(seconds: float, cancel: threading.Event | None) -> None:
        if seconds <= 0:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            return
        if cancel is None:
            time.sleep(seconds)
        elif cancel.wait(seconds):
            raise Cancelled("cancelled")
