"""``SSHCommunicator``: the ``guest.communicator.Communicator`` protocol over SSH."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from ruddervirt.guest.communicator import AttemptCallback, Endpoint, OutputCallback
from ruddervirt.guest.errors import CommandTimeout, ConnectionLost, GuestError
from ruddervirt.guest.ssh.reboot import reboot_and_wait
from ruddervirt.guest.ssh.session import AttemptFailure, SSHSession, SSHTarget
from ruddervirt.guest.ssh.wait import wait_for_ssh


class SSHCommunicator:
    """One guest over SSH, one session at a time (see the protocol for the contract).

    Identity: ``reboot`` insists on the host key the guest had before it; ``wait`` accepts
    whatever key the guest presents unless ``target`` pins one (after a handbuild step a person
    may have changed the guest's keys on purpose).
    """

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self._session: SSHSession | None = None

    @property
    def host_key(self) -> str:
        return self._session.host_key_fingerprint if self._session is not None else ""

    @property
    def session(self) -> SSHSession | None:
        """The current session (for callers that need more than the protocol), or None."""
        return self._session

    def wait(
        self,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> None:
        self.close()

        def note(_attempt: int, failure: AttemptFailure) -> None:
            if on_attempt is not None:
                on_attempt(failure.message)

        self._session = wait_for_ssh(self.target, timeout=timeout, cancel=cancel, on_attempt=note)

    def run(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        return self._live().run(
            command, on_output=on_output, timeout=timeout, stdin=stdin, cancel=cancel
        )

    def upload(
        self,
        data: bytes | Path,
        remote_path: str,
        *,
        mode: int = 0o644,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self._live().upload(data, remote_path, mode=mode, timeout=timeout, cancel=cancel)

    def reboot(
        self,
        command: str,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        old, self._session = self._live(), None  # reboot_and_wait closes the old session
        self._session = reboot_and_wait(
            functools.partial(wait_for_ssh, self.target),
            command,
            timeout=timeout,
            cancel=cancel,
            session=old,
            on_output=on_output,
        )

    def power_off(
        self, command: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> None:
        try:
            self._live().run(command, timeout=timeout, cancel=cancel)
        except (ConnectionLost, CommandTimeout):
            pass  # the guest went down under us: that is the point
        finally:
            self.close()

    def is_alive(self) -> bool:
        return self._session is not None and self._session.is_alive()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _live(self) -> SSHSession:
        if self._session is None:
            raise GuestError(f"no SSH session to {self.target.address}: wait for the guest first")
        return self._session


def ssh_communicator(endpoint: Endpoint) -> SSHCommunicator:
    """The ``CommunicatorFactory`` of the real engine: SSH to ``endpoint``."""
    return SSHCommunicator(
        SSHTarget(
            port=endpoint.port,
            username=endpoint.username,
            private_key=endpoint.private_key,
            password=endpoint.password,
            host=endpoint.host,
        )
    )
