"""The seam between the build engine and a guest: the ``Communicator`` protocol.

The engine never speaks SSH itself: it asks a communicator to wait for the guest, run a
command, upload a file, reboot the guest or power it off. ``guest.ssh.SSHCommunicator`` does
it over SSH; ``guest.fake.ScriptedCommunicator`` plays a script in unit tests. Both raise the
errors of ``guest.errors`` and nothing else for guest-side failures.

A communicator holds at most one session to its guest at a time; it is used from one thread
(a cancel event may be set from any thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

# on_output(stream, line): stream is "stdout" or "stderr", line has no line ending.
OutputCallback = Callable[[str, str], None]
# on_attempt(message): one failed attempt to reach the guest, worded for a person.
AttemptCallback = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom the host logs in to a guest: a loopback port forward and a login."""

    port: int
    username: str
    private_key: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    vm: str = ""  # the guest's name in the manifest, for messages (and fakes)


class Session(Protocol):
    """What running a shell step needs: an SSH session has it, every Communicator too."""

    def run(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Run ``command`` in the guest, streaming its output lines to ``on_output``; return
        the exit status (-1 when the command died without one). Raises CommandTimeout,
        Cancelled, ConnectionLost, GuestError (no session: call wait first)."""
        ...

    def upload(
        self,
        data: bytes | Path,
        remote_path: str,
        *,
        mode: int = 0o644,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Write ``data`` (bytes, or a local file) to ``remote_path`` with ``mode``. Raises
        TransferFailed, CommandTimeout, Cancelled, ConnectionLost; OSError for a local file
        that cannot be read."""
        ...

    def is_alive(self) -> bool:
        """Whether the current session still works as far as the transport knows."""
        ...


@runtime_checkable
class Communicator(Session, Protocol):
    """Everything the build engine asks of a guest. See the module docstring."""

    @property
    def host_key(self) -> str:
        """The fingerprint of the guest's identity once a session exists, else ""."""
        ...

    def wait(
        self,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> None:
        """Block until the guest accepts a session (closing any earlier one first).

        Raises WaitTimeout after ``timeout`` s, Cancelled as soon as ``cancel`` is set.
        ``on_attempt`` hears every failed attempt. The identity may differ from an earlier
        session's (a person at the console may have changed it); ``reboot`` insists on it.
        """
        ...

    def reboot(
        self,
        command: str,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        """Reboot the guest with ``command`` and return once a session to the rebooted guest
        exists (the identity must not change). Raises RebootFailed (the command failed, or
        the guest was not back within ``timeout``), Cancelled, HostKeyMismatch."""
        ...

    def power_off(
        self, command: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> None:
        """Ask the guest to power itself off with ``command`` and close the session. The
        connection dropping or the command not returning within ``timeout`` is the expected
        end, not an error. Raises Cancelled; GuestError when no session exists."""
        ...

    def close(self) -> None:
        """Close the session, if any (idempotent)."""
        ...


# Makes the communicator of one guest, once the host knows where to reach it.
CommunicatorFactory = Callable[[Endpoint], Communicator]
