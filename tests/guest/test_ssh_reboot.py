"""reboot_and_wait against a dropbear "guest" behind a QEMU-hostfwd-like forwarder.

A reboot is simulated: the reboot command drops a flag file; a watcher thread then kills the
server (and every session process in its PID namespace), writes a new boot id, and starts it
again. The forwarder keeps the port open throughout, accepting and closing while the "guest" is
down, exactly like QEMU's user-mode networking.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ruddervirt.guest.shellscript import RebootFailed, reboot_and_wait
from ruddervirt.guest.ssh import (
    AttemptFailure,
    Cancelled,
    HostKeyMismatch,
    SSHTarget,
    wait_for_ssh,
)

pytestmark = pytest.mark.sshserver


@dataclass
class Guest:
    server: object
    target: SSHTarget
    boot_id: Path
    flag: Path
    failures: list[AttemptFailure]
    watchers: list[threading.Thread] = field(default_factory=list)

    @property
    def boot_id_command(self) -> str:
        return f"cat {self.boot_id}"

    def factory(self):
        record = lambda _n, failure: self.failures.append(failure)  # noqa: E731
        return functools.partial(wait_for_ssh, self.target, poll_interval=0.05, on_attempt=record)

    def simulate_reboot(self, *, delay: float = 0.0, down_for: float = 0.3, new_key=False):
        """Start a watcher: once the flag appears, reboot the fake guest."""

        def watch() -> None:
            deadline = time.monotonic() + 10
            while not self.flag.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(delay)
            self.server.stop()
            self.boot_id.write_text(str(uuid.uuid4()) + "\n")
            if new_key:
                self.server.new_host_key()
            time.sleep(down_for)
            self.server.start()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        self.watchers.append(thread)
        return thread


@pytest.fixture
def guest(server_factory, hostfwd, keys, workdir: Path) -> Iterator[Guest]:
    server = server_factory()
    proxy = hostfwd(server.port)
    boot_id = workdir / "boot_id"
    boot_id.write_text(str(uuid.uuid4()) + "\n")
    target = SSHTarget(port=proxy.port, username="root", private_key=keys.private)
    guest = Guest(server, target, boot_id, workdir / "reboot-requested", [])
    yield guest
    for watcher in guest.watchers:
        watcher.join(timeout=15)
    server.stop()


@pytest.mark.parametrize(
    ("command_tail", "delay"),
    [
        ("; sleep 5", 0.0),  # the command hangs and the connection drops under it
        ("", 0.4),  # the command returns at once; the guest goes down a little later
    ],
)
def test_reboot_returns_a_session_to_the_new_boot(guest: Guest, command_tail, delay) -> None:
    old_boot = guest.boot_id.read_text().strip()
    session = wait_for_ssh(guest.target, timeout=10)
    watcher = guest.simulate_reboot(delay=delay)
    started = time.monotonic()
    new = reboot_and_wait(
        guest.factory(),
        f"echo rebooting > {guest.flag}{command_tail}",
        timeout=15,
        session=session,
        boot_id_command=guest.boot_id_command,
        poll_interval=0.1,
    )
    with new:
        assert time.monotonic() - started < 6
        current = new.run_capture(guest.boot_id_command).stdout.decode().strip()
        assert current != old_boot
        assert new.host_key_fingerprint == session.host_key_fingerprint
        assert not session.is_alive()
    watcher.join(timeout=5)
    kinds = {failure.kind for failure in guest.failures}
    assert "banner" in kinds  # it was seen down...
    assert "tcp" not in kinds  # ...while the forwarded port stayed open


def test_failing_reboot_command_fails_at_once(guest: Guest) -> None:
    with wait_for_ssh(guest.target, timeout=10) as session:
        started = time.monotonic()
        with pytest.raises(RebootFailed, match="status 1: sudo: a password is required"):
            reboot_and_wait(
                guest.factory(),
                "echo 'sudo: a password is required' >&2; exit 1",
                timeout=15,
                session=session,
                boot_id_command=guest.boot_id_command,
            )
        assert time.monotonic() - started < 2


def test_changed_host_key_after_reboot_is_refused(guest: Guest) -> None:
    session = wait_for_ssh(guest.target, timeout=10)
    guest.simulate_reboot(new_key=True)
    with pytest.raises(HostKeyMismatch, match="host key changed across the reboot"):
        reboot_and_wait(
            guest.factory(),
            f"touch {guest.flag}; sleep 5",
            timeout=15,
            session=session,
            boot_id_command=guest.boot_id_command,
        )


def test_without_boot_id_the_dropped_connection_marks_the_reboot(guest: Guest) -> None:
    session = wait_for_ssh(guest.target, timeout=10)
    guest.simulate_reboot()
    with reboot_and_wait(
        guest.factory(),
        f"touch {guest.flag}; sleep 5",
        timeout=15,
        session=session,
        boot_id_command="echo no boot id here >&2; exit 1",
    ) as new:
        assert new.run("true") == 0
        assert not session.is_alive()


def test_guest_that_never_reboots_times_out(guest: Guest) -> None:
    with (
        wait_for_ssh(guest.target, timeout=10) as session,
        pytest.raises(RebootFailed, match="did not reboot in time"),
    ):
        reboot_and_wait(
            guest.factory(),
            "true",
            timeout=0.6,
            session=session,
            boot_id_command=guest.boot_id_command,
            poll_interval=0.2,
        )


def test_cancel_while_waiting_for_the_reboot(guest: Guest) -> None:
    cancel = threading.Event()
    threading.Timer(0.4, cancel.set).start()
    started = time.monotonic()
    with wait_for_ssh(guest.target, timeout=10) as session, pytest.raises(Cancelled):
        reboot_and_wait(
            guest.factory(),
            "true",
            timeout=30,
            session=session,
            cancel=cancel,
            boot_id_command=guest.boot_id_command,
            poll_interval=0.2,
        )
    assert time.monotonic() - started < 1.5
