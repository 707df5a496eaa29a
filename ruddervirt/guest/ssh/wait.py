"""Waiting for a guest's SSH server: poll until an authenticated session exists.

Guests are reached through loopback port forwards only (QEMU user-mode ``hostfwd``), whose
host port accepts at once even while the guest is down: waiting therefore means waiting for
the SSH banner, not for the port (see ``_BannerRace``).
"""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable

from ruddervirt.guest.errors import WaitTimeout
from ruddervirt.guest.ssh.cancel import SLICE, check_cancel, sleep
from ruddervirt.guest.ssh.session import (
    RANK,
    AttemptFailed,
    AttemptFailure,
    SSHSession,
    SSHTarget,
    login,
)

CONNECT_TIMEOUT = 2.0
BANNER_TIMEOUT = 5.0  # how long one connection may wait for the server's first line
STAGGER = 1.0  # a fresh connection this often while earlier ones still wait for a banner
_MAX_PENDING = 8


class SSHWaitTimeout(WaitTimeout):
    """SSH did not become usable in time; ``reason`` says why (the most informative failure)."""


def wait_for_ssh(
    target: SSHTarget,
    *,
    timeout: float,
    poll_interval: float = 0.25,
    cancel: threading.Event | None = None,
    on_attempt: Callable[[int, AttemptFailure], None] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    banner_timeout: float = BANNER_TIMEOUT,
    stagger: float = STAGGER,
) -> SSHSession:
    """Poll until an authenticated session exists and return it.

    Connections that wait for a banner overlap (see _BannerRace): a new one starts every
    ``stagger`` seconds while older ones keep waiting up to ``banner_timeout``.

    Raises SSHWaitTimeout (message: the most informative failure and the elapsed time),
    Cancelled as soon as ``cancel`` is set, HostKeyMismatch when the target pins another key.
    ``on_attempt(n, failure)`` is called after every failed attempt.
    """
    started = time.monotonic()
    best: AttemptFailure | None = None
    last: AttemptFailure | None = None
    attempt = 0
    race = _BannerRace(target, connect_timeout, banner_timeout, stagger)
    try:
        while True:
            check_cancel(cancel)
            attempt += 1
            # Every attempt gets at least a moment, even when it starts right at the deadline.
            deadline = max(started + timeout, time.monotonic() + 0.1)
            try:
                sock, banner = race.next_banner(deadline, cancel)
                return login(target, sock, banner, deadline, cancel)
            except AttemptFailed as exc:
                last = exc.failure
                if best is None or RANK[last.kind] >= RANK[best.kind]:
                    best = last
                if on_attempt is not None:
                    on_attempt(attempt, last)
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                raise _wait_timeout(target, best, last, elapsed, attempt)
            if not race.waiting:  # connections still in the race are being watched already
                sleep(min(poll_interval, timeout - elapsed), cancel)
    finally:
        race.close()


def _wait_timeout(
    target: SSHTarget, best: AttemptFailure, last: AttemptFailure, elapsed: float, attempts: int
) -> SSHWaitTimeout:
    message = (
        f"SSH to {target.username}@{target.address} not ready after {elapsed:.1f}s "
        f"({attempts} attempts): {best.message}"
    )
    if last != best:
        message += f"; last attempt: {last.message}"
    return SSHWaitTimeout(message, reason=best.message, elapsed=elapsed, attempts=attempts)


def _tcp_connect(target: SSHTarget, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((target.host, target.port), timeout=timeout)
    except ConnectionRefusedError:
        detail = "connection refused"
    except TimeoutError:
        detail = f"connect timed out after {timeout:.1f}s"
    except OSError as exc:
        detail = exc.strerror or str(exc)
    raise AttemptFailed("tcp", f"no TCP connection to {target.address} ({detail})")


class _BannerRace:
    """Connections waiting for the guest's SSH banner, overlapping in time.

    Through QEMU's hostfwd the host port accepts at once even while the guest is down, and
    QEMU's user-mode stack then retries the guest with a growing back-off, so one connection
    may hear the banner seconds after the guest's SSH server is up. A fresh connection is
    therefore opened every ``stagger`` seconds while older ones keep waiting (each up to
    ``banner_timeout``): the first to hear a banner wins. A server that came up is noticed
    within about ``stagger``, and a slow but live one is never given up early. The banner is
    only peeked at: paramiko reads it again.
    """

    def __init__(
        self, target: SSHTarget, connect_timeout: float, banner_timeout: float, stagger: float
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.banner_timeout = banner_timeout
        self.stagger = stagger
        self.pending: list[tuple[socket.socket, float]] = []  # (socket, opened at), oldest first

    @property
    def waiting(self) -> bool:
        return bool(self.pending)

    def close(self) -> None:
        for sock, _opened in self.pending:
            sock.close()
        self.pending.clear()

    def _forget(self, sock: socket.socket) -> None:
        self.pending = [(s, t) for s, t in self.pending if s is not sock]

    def _drop(self, sock: socket.socket) -> None:
        self._forget(sock)
        sock.close()

    def next_banner(
        self, deadline: float, cancel: threading.Event | None
    ) -> tuple[socket.socket, str]:
        """A connected socket whose server has sent its first line, and that line. Raises
        AttemptFailed for the first connection that fails (refused, closed, silent for
        ``banner_timeout``); the others stay in the race for the next call."""
        while True:
            check_cancel(cancel)
            now = time.monotonic()
            due = not self.pending or now - self.pending[-1][1] >= self.stagger
            if due and len(self.pending) < _MAX_PENDING:
                timeout = min(self.connect_timeout, max(deadline - now, 0.01))
                self.pending.append((_tcp_connect(self.target, timeout), time.monotonic()))
                now = time.monotonic()
            oldest, opened = self.pending[0]
            if now - opened >= self.banner_timeout or now >= deadline:
                self._drop(oldest)
                waited = min(self.banner_timeout, now - opened)
                raise AttemptFailed(
                    "banner", f"TCP connects but no SSH banner within {waited:.1f}s"
                )
            wait = min(
                SLICE * 4,
                self.pending[-1][1] + self.stagger - now,
                opened + self.banner_timeout - now,
                deadline - now,
            )
            readable, _, _ = select.select([s for s, _ in self.pending], [], [], max(wait, 0))
            for sock in readable:
                banner, reason = _peek_first_line(sock)
                if banner is None:
                    self._drop(sock)
                    raise AttemptFailed("banner", f"TCP connects but no SSH banner ({reason})")
                self._forget(sock)  # the caller owns it now
                return sock, banner


def _peek_first_line(sock: socket.socket) -> tuple[str | None, str]:
    """The first line a readable socket's server sent (only peeked at: it stays to be read),
    or None and why there is none."""
    try:
        data = sock.recv(256, socket.MSG_PEEK)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if not data:
        return None, "closed by the other side"
    return data.split(b"\n", 1)[0].strip().decode("ascii", "replace"), ""


def read_banner(port: int, *, timeout: float, host: str = "127.0.0.1") -> str | None:
    """The first line the server on loopback ``host``:``port`` sends within ``timeout``, or
    None when it sends none (no connection, closed at once, silent): one short connection,
    closed again. The guest readiness probe for guests without an agent (through QEMU's
    hostfwd a fresh connection reaches a guest's SSH server as soon as it listens)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")  # network safety rule
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        readable, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        return _peek_first_line(sock)[0] if readable else None
