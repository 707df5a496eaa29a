"""wait_for_ssh against real loopback servers: success, the three failure kinds, cancel."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from ruddervirt.guest.ssh import (
    AttemptFailure,
    Cancelled,
    HostKeyMismatch,
    SSHTarget,
    SSHWaitTimeout,
    read_banner,
    wait_for_ssh,
)
from tests.loopback import greeting_server

pytestmark = pytest.mark.sshserver


def _host_key_fingerprint(server) -> str:
    public = subprocess.run(
        ["dropbearkey", "-y", "-f", str(server.host_key)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    line = next(line for line in public.splitlines() if line.startswith("ssh-ed25519 "))
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def test_wait_for_ssh_connects_with_key_and_records_host_key(server, target) -> None:
    with wait_for_ssh(target, timeout=5) as session:
        assert session.is_alive()
        assert session.host_key_fingerprint == _host_key_fingerprint(server)
        assert session.server_version.startswith("SSH-2.0-dropbear")
    assert not session.is_alive()


def test_wait_for_ssh_connects_with_password(server, root_password) -> None:
    target = SSHTarget(port=server.port, username="root", password=root_password)
    with wait_for_ssh(target, timeout=5) as session:
        assert session.run("true") == 0


def test_nothing_listening_is_reported_as_connection_refused(unused_port: int) -> None:
    port = unused_port
    target = SSHTarget(port=port, username="root", password="x")
    started = time.monotonic()
    with pytest.raises(SSHWaitTimeout) as caught:
        wait_for_ssh(target, timeout=0.4, poll_interval=0.1)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert f"no TCP connection to 127.0.0.1:{port} (connection refused)" in message
    assert "not ready after 0.4s" in message
    assert caught.value.attempts >= 3


def test_silent_tcp_server_is_reported_as_no_banner() -> None:
    with greeting_server(None) as port:
        target = SSHTarget(port=port, username="root", password="x")
        with pytest.raises(SSHWaitTimeout, match="TCP connects but no SSH banner within"):
            wait_for_ssh(target, timeout=0.4, banner_timeout=0.2)


def test_server_that_closes_at_once_is_reported_as_no_banner() -> None:
    with greeting_server(None, close_at_once=True) as port:
        target = SSHTarget(port=port, username="root", password="x")
        with pytest.raises(SSHWaitTimeout) as caught:
            wait_for_ssh(target, timeout=0.3, poll_interval=0.1)
    assert "TCP connects but no SSH banner (closed by the other side)" in str(caught.value)
    assert "connection refused" not in str(caught.value)


def test_wrong_key_and_password_are_reported_as_refused_authentication(server, keys) -> None:
    target = SSHTarget(
        port=server.port, username="root", private_key=keys.other_private, password="wrong"
    )
    with pytest.raises(SSHWaitTimeout) as caught:
        wait_for_ssh(target, timeout=0.2)
    assert (
        "SSH server answered but authentication was refused for user root "
        "(tried publickey, password)"
    ) in str(caught.value)


def test_on_attempt_sees_every_failure(unused_port: int) -> None:
    seen: list[tuple[int, AttemptFailure]] = []
    target = SSHTarget(port=unused_port, username="root", password="x")
    with pytest.raises(SSHWaitTimeout):
        wait_for_ssh(target, timeout=0.25, poll_interval=0.05, on_attempt=lambda *a: seen.append(a))
    assert [number for number, _ in seen] == list(range(1, len(seen) + 1))
    assert len(seen) >= 3
    assert {failure.kind for _, failure in seen} == {"tcp"}


def test_cancel_stops_waiting_promptly_even_while_waiting_for_a_banner() -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with greeting_server(None) as port:
        target = SSHTarget(port=port, username="root", password="x")
        started = time.monotonic()
        with pytest.raises(Cancelled):
            wait_for_ssh(target, timeout=30, cancel=cancel)
    assert time.monotonic() - started < 1.0


def test_pinned_host_key_mismatch_fails_at_once(server, keys) -> None:
    target = SSHTarget(
        port=server.port,
        username="root",
        private_key=keys.private,
        host_key_fingerprint="SHA256:not-the-right-key",
    )
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch, match=r"host key of 127\.0\.0\.1"):
        wait_for_ssh(target, timeout=10)
    assert time.monotonic() - started < 2


def test_pinned_host_key_that_matches_connects(server, keys) -> None:
    target = SSHTarget(
        port=server.port,
        username="root",
        private_key=keys.private,
        host_key_fingerprint=_host_key_fingerprint(server),
    )
    with wait_for_ssh(target, timeout=5) as session:
        assert session.run("true") == 0


def test_server_that_starts_late_is_picked_up(server_factory, keys, unused_port) -> None:
    port = unused_port
    target = SSHTarget(port=port, username="root", private_key=keys.private)
    threading.Timer(0.3, lambda: server_factory(port=port)).start()
    started = time.monotonic()
    with wait_for_ssh(target, timeout=10, poll_interval=0.1) as session:
        assert session.run("true") == 0
    assert time.monotonic() - started < 5


def test_most_informative_failure_wins_and_the_last_one_is_added(server_factory, keys) -> None:
    doomed = server_factory()
    target = SSHTarget(port=doomed.port, username="root", private_key=keys.other_private)
    threading.Timer(0.2, doomed.stop).start()
    with pytest.raises(SSHWaitTimeout) as caught:
        wait_for_ssh(target, timeout=0.6, poll_interval=0.05)
    message = str(caught.value)
    assert caught.value.reason.startswith("SSH server answered but authentication was refused")
    assert message.index("authentication was refused") < message.index("; last attempt: no TCP")


def test_server_that_stalls_after_its_banner_is_reported_as_a_handshake_failure() -> None:
    with greeting_server(b"SSH-2.0-Stalling_1.0\r\n") as port:
        target = SSHTarget(port=port, username="root", password="x")
        with pytest.raises(SSHWaitTimeout) as caught:
            wait_for_ssh(target, timeout=0.5)
    assert (
        "SSH server answered (SSH-2.0-Stalling_1.0) but the key exchange did not finish"
        in caught.value.reason
    )


def test_non_ssh_server_is_reported_with_what_it_said() -> None:
    with greeting_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        target = SSHTarget(port=port, username="root", password="x")
        with pytest.raises(SSHWaitTimeout) as caught:
            wait_for_ssh(target, timeout=0.3)
    assert "SSH server answered (HTTP/1.1 400 Bad Request) but the" in caught.value.reason


def test_cancel_during_the_handshake_is_prompt() -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with greeting_server(b"SSH-2.0-Stalling_1.0\r\n") as port:
        target = SSHTarget(port=port, username="root", password="x")
        started = time.monotonic()
        with pytest.raises(Cancelled):
            wait_for_ssh(target, timeout=30, cancel=cancel)
    assert time.monotonic() - started < 1.0


@contextlib.contextmanager
def hostfwd_like(upstream_port: int, *, live_after: float, delay: float = 0.0) -> Iterator[dict]:
    """A port that behaves like QEMU's hostfwd while a guest boots: connections accepted in
    the first ``live_after`` seconds stay silent for ever (their SYN to the guest is lost);
    later ones are relayed to the real SSH server at ``upstream_port``, after ``delay``
    seconds (a slow guest). Records when each connection came and which one was relayed."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {"accepted": [], "relayed": [], "spoke": set()}
    opened: list[socket.socket] = []
    started = time.monotonic()

    def pipe(src: socket.socket, dst: socket.socket, index: int | None = None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if index is not None:
                    seen["spoke"].add(index)  # the client talked SSH over this one
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def relay(conn: socket.socket, index: int) -> None:
        time.sleep(delay)
        with contextlib.suppress(OSError):  # the test may be over and everything closed
            upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=5)
            upstream.settimeout(None)
            opened.append(upstream)
            seen["relayed"].append(index)
            threading.Thread(target=pipe, args=(conn, upstream, index), daemon=True).start()
            pipe(upstream, conn)

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            opened.append(conn)
            index = len(seen["accepted"])
            seen["accepted"].append(time.monotonic() - started)
            if time.monotonic() - started >= live_after:
                threading.Thread(target=relay, args=(conn, index), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    try:
        seen["port"] = listener.getsockname()[1]
        yield seen
    finally:
        listener.close()
        for sock in opened:
            sock.close()


def test_a_fresh_connection_wins_while_an_early_one_stays_silent(server, keys) -> None:
    with hostfwd_like(server.port, live_after=0.5) as seen:
        target = SSHTarget(port=seen["port"], username="root", private_key=keys.private)
        started = time.monotonic()
        with wait_for_ssh(target, timeout=30, banner_timeout=20, stagger=0.3):
            took = time.monotonic() - started
    assert seen["spoke"] and 0 not in seen["spoke"]  # not over the first, silent connection
    # The silent first connection was not waited out (it had 20 s): a later one won.
    assert took < 20
    assert len(seen["accepted"]) >= 2


def test_a_slow_but_live_server_is_not_given_up_early(server, keys) -> None:
    """The banner takes longer than the stagger on every connection: the first connection,
    kept open, still wins."""
    with hostfwd_like(server.port, live_after=0.0, delay=1.0) as seen:
        target = SSHTarget(port=seen["port"], username="root", private_key=keys.private)
        with wait_for_ssh(target, timeout=30, banner_timeout=5, stagger=0.3) as session:
            assert session.run("true", timeout=10) == 0
    assert seen["spoke"] == {0}  # the first connection was kept and won


def test_read_banner_returns_the_first_line_the_server_sends() -> None:
    with greeting_server(b"SSH-2.0-dropbear_2022.83\r\nmore") as port:
        assert read_banner(port, timeout=2) == "SSH-2.0-dropbear_2022.83"


@pytest.mark.parametrize("close_at_once", [True, False])
def test_read_banner_is_none_within_its_timeout_while_the_guest_is_down(
    close_at_once: bool,
) -> None:
    with greeting_server(None, close_at_once=close_at_once) as port:
        began = time.monotonic()
        assert read_banner(port, timeout=0.3) is None
        assert time.monotonic() - began < 1.5


def test_read_banner_is_none_for_a_closed_port_and_refuses_other_hosts(unused_port) -> None:
    assert read_banner(unused_port, timeout=0.5) is None
    with pytest.raises(ValueError, match="not a loopback address"):
        read_banner(22, timeout=0.5, host="192.0.2.1")
