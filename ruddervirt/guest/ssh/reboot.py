"""Rebooting a guest over SSH and waiting for it to come back as a new boot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ruddervirt.guest.communicator import OutputCallback
from ruddervirt.guest.errors import (
    CommandTimeout,
    ConnectionLost,
    HostKeyMismatch,
    RebootFailed,
    WaitTimeout,
)
from ruddervirt.guest.ssh.cancel import sleep
from ruddervirt.guest.ssh.session import SSHSession

BOOT_ID_COMMAND = "cat /proc/sys/kernel/random/boot_id"
# For Windows guests (untested here: no Windows guest on this machine).
WINDOWS_BOOT_ID_COMMAND = (
    'powershell -NoProfile -Command "(Get-CimInstance Win32_OperatingSystem).LastBootUpTime'
    ".ToString('o')\""
)
SessionFactory = Callable[..., SSHSession]


def reboot_and_wait(
    session_factory: SessionFactory,
    command: str,
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    session: SSHSession | None = None,
    on_output: OutputCallback | None = None,
    boot_id_command: str = BOOT_ID_COMMAND,
    command_grace: float = 10.0,
    poll_interval: float = 1.0,
) -> SSHSession:
    """Reboot the guest with ``command`` and return a session to the rebooted guest.

    ``session_factory(timeout=..., cancel=...)`` opens a session, typically
    ``functools.partial(wait_for_ssh, target)``; ``session`` (default: a fresh one) runs the
    command and is closed afterwards. The command may drop the connection, die (-1 or 128+),
    or hang (its channel is closed after ``command_grace`` s); any other non-zero status raises
    RebootFailed. A reboot is recognised by the guest's boot id changing, which works even when
    the host port stays open throughout (QEMU hostfwd); where ``boot_id_command`` fails
    (non-Linux), by the old connection dying. The new session must present the same host key
    (HostKeyMismatch otherwise). Raises RebootFailed on timeout, Cancelled on cancel.
    """
    deadline = time.monotonic() + timeout
    old = session or session_factory(timeout=timeout, cancel=cancel)
    try:
        before = _boot_id(old, boot_id_command, cancel)
        _issue_reboot(old, command, min(command_grace, timeout), on_output, cancel)
        return _wait_for_new_boot(
            session_factory, old, before, boot_id_command, deadline, poll_interval, cancel
        )
    finally:
        old.close()


def _boot_id(session: SSHSession, command: str, cancel: threading.Event | None) -> str | None:
    result = session.run_capture(command, timeout=30, cancel=cancel)
    text = result.stdout.decode("utf-8", "replace").strip()
    return text if result.exit_status == 0 and text else None


def _issue_reboot(
    session: SSHSession,
    command: str,
    grace: float,
    on_output: OutputCallback | None,
    cancel: threading.Event | None,
) -> None:
    lines: list[str] = []

    def collect(stream: str, line: str) -> None:
        lines.append(line)
        if on_output is not None:
            on_output(stream, line)

    try:
        status = session.run(command, on_output=collect, timeout=grace, cancel=cancel)
    except (CommandTimeout, ConnectionLost):
        return  # still running when the guest went down, or the connection went first
    if status in (0, -1) or status >= 128:  # -1 / 128+: killed by a signal while going down
        return
    tail = "\n".join(lines[-20:])
    raise RebootFailed(f"reboot command {command!r} exited with status {status}: {tail}")


def _wait_for_new_boot(
    session_factory: SessionFactory,
    old: SSHSession,
    before: str | None,
    boot_id_command: str,
    deadline: float,
    poll_interval: float,
    cancel: threading.Event | None,
) -> SSHSession:
    went_away = False
    while True:
        try:
            fresh = session_factory(timeout=max(deadline - time.monotonic(), 0.1), cancel=cancel)
        except WaitTimeout as exc:
            raise RebootFailed(f"guest did not come back after the reboot: {exc}") from exc
        try:
            if _is_new_boot(fresh, old, before, boot_id_command, went_away, cancel):
                return fresh
        except (ConnectionLost, CommandTimeout):
            went_away = True  # caught it going down
        except BaseException:
            fresh.close()
            raise
        fresh.close()  # still the same boot: look again shortly
        went_away = went_away or not old.is_alive()
        if time.monotonic() + poll_interval > deadline:
            raise RebootFailed("the guest did not reboot in time (its boot id did not change)")
        sleep(poll_interval, cancel)


def _is_new_boot(
    fresh: SSHSession,
    old: SSHSession,
    before: str | None,
    boot_id_command: str,
    went_away: bool,
    cancel: threading.Event | None,
) -> bool:
    if fresh.host_key_fingerprint != old.host_key_fingerprint:
        raise HostKeyMismatch(
            f"host key changed across the reboot: {old.host_key_fingerprint} "
            f"-> {fresh.host_key_fingerprint}"
        )
    if before is None:  # no boot id on this guest: the old connection dying must do
        return went_away or not old.is_alive()
    return _boot_id(fresh, boot_id_command, cancel) not in (None, before)
