"""An SSH session: where to log in (``SSHTarget``), the login itself (key exchange, host key
pinning, authentication) and the authenticated ``SSHSession`` that runs commands and moves
files.

Host keys: a build VM is fresh, so its host key is unknown by construction and there is nothing
to verify it against. We therefore accept the first key we see (trust on first use), expose its
fingerprint on the session, and pin it for every later connection to the same guest (after a
reboot, for instance): a different key then raises ``HostKeyMismatch``.

Sessions are not thread-safe: use one session from one thread (cancel events may be set from
any thread).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import paramiko

from ruddervirt.guest.communicator import OutputCallback
from ruddervirt.guest.errors import HostKeyMismatch
from ruddervirt.guest.ssh import exec as ssh_exec
from ruddervirt.guest.ssh.cancel import SLICE, check_cancel
from ruddervirt.guest.ssh.exec import CommandResult, Link
from ruddervirt.guest.ssh.keys import fingerprint, load_private_key
from ruddervirt.guest.ssh.transfer import Transfers

HANDSHAKE_TIMEOUT = 30.0  # key exchange, and separately authentication, of one attempt


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in. ``private_key`` may be a paramiko key or key text.

    ``host_key_fingerprint`` (optional) pins the guest's host key; a different key fails at once.
    """

    port: int
    username: str
    private_key: paramiko.PKey | str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    host_key_fingerprint: str | None = None

    def __post_init__(self) -> None:
        # Network safety rule: host processes only ever connect to loopback.
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"SSH target {self.host} is not a loopback address")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid SSH port {self.port}")
        if self.private_key is None and self.password is None:
            raise ValueError("an SSH target needs a private key or a password")
        if isinstance(self.private_key, str):
            object.__setattr__(self, "private_key", load_private_key(self.private_key))

    @property
    def key(self) -> paramiko.PKey | None:
        """The private key as a paramiko key (key text was parsed in ``__post_init__``)."""
        key = self.private_key
        return load_private_key(key) if isinstance(key, str) else key

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AttemptFailure:
    """Why one connection attempt failed. ``kind``: tcp, banner, handshake or auth."""

    kind: str
    message: str


# How far an attempt got: the furthest failure is the most informative one.
RANK = {"tcp": 0, "banner": 1, "handshake": 2, "auth": 3}


class AttemptFailed(Exception):
    """One attempt to log in failed (internal to the package: wait_for_ssh retries)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.failure = AttemptFailure(kind, message)


def login(
    target: SSHTarget,
    sock: socket.socket,
    banner: str,
    deadline: float,
    cancel: threading.Event | None,
) -> SSHSession:
    """Key exchange, host key check and authentication on ``sock``, whose server sent
    ``banner``, bounded by ``deadline``. Raises AttemptFailed; closes ``sock`` on failure."""

    def left() -> float:
        return max(deadline - time.monotonic(), 0.01)

    transport: paramiko.Transport | None = None
    try:
        transport = paramiko.Transport(sock)
        transport.banner_timeout = left()
        # Capped so that a wedged connection is given up and retried rather than waited on.
        _handshake(transport, banner, min(HANDSHAKE_TIMEOUT, left()), cancel)
        transport.auth_timeout = min(HANDSHAKE_TIMEOUT, left())
        host_key = transport.get_remote_server_key()
        _check_pinned(target.host_key_fingerprint, host_key, target)
        with _closed_on_cancel(transport, cancel):
            try:
                _authenticate(transport, target)
            except AttemptFailed:
                check_cancel(cancel)  # the failure may be our own closing of the transport
                raise
        transport.set_keepalive(5)  # so that a silently vanished guest is noticed
        return SSHSession(transport, target, host_key)
    except BaseException:
        if transport is not None:
            transport.close()
        sock.close()
        raise


def _handshake(
    transport: paramiko.Transport, banner: str, timeout: float, cancel: threading.Event | None
) -> None:
    """Key exchange, abandoned on cancel or after ``timeout`` (paramiko's own synchronous
    variant silently returns on timeout)."""
    done = threading.Event()
    transport.start_client(event=done)
    deadline = time.monotonic() + timeout
    while not done.wait(SLICE):
        check_cancel(cancel)
        if time.monotonic() > deadline:
            raise AttemptFailed(
                "handshake",
                f"SSH server answered ({banner}) but the key exchange did not finish "
                f"within {timeout:.1f}s",
            )
    if not transport.is_active():
        reason = transport.get_exception() or "connection closed"
        raise AttemptFailed(
            "handshake", f"SSH server answered ({banner}) but the handshake failed: {reason}"
        )


@contextlib.contextmanager
def _closed_on_cancel(
    transport: paramiko.Transport, cancel: threading.Event | None
) -> Iterator[None]:
    """Close ``transport`` if ``cancel`` is set meanwhile: this makes paramiko's blocking
    calls (authentication) return promptly."""
    if cancel is None:
        yield
        return
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(SLICE):
            if cancel.is_set():
                transport.close()
                return

    threading.Thread(target=watch, name="ssh-cancel-watch", daemon=True).start()
    try:
        yield
    finally:
        finished.set()


def _check_pinned(expected: str | None, key: paramiko.PKey, target: SSHTarget) -> None:
    actual = fingerprint(key)
    if expected is not None and actual != expected:
        raise HostKeyMismatch(
            f"host key of {target.address} changed: expected {expected}, got {actual}"
        )


def _authenticate(transport: paramiko.Transport, target: SSHTarget) -> None:
    """Try the key, then the password; raise AttemptFailed("auth") naming what was tried."""
    tried: list[str] = []
    attempts: list[tuple[str, Callable[[], object]]] = []
    key = target.key
    if key is not None:
        attempts.append(("publickey", lambda: transport.auth_publickey(target.username, key)))
    if target.password is not None:
        password = target.password
        attempts.append(("password", lambda: transport.auth_password(target.username, password)))
    for method, attempt in attempts:
        tried.append(method)
        try:
            attempt()
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise AttemptFailed(
                "handshake", f"SSH server answered but dropped us during {method} auth: {exc}"
            ) from None
        if transport.is_authenticated():
            return
    raise AttemptFailed(
        "auth",
        f"SSH server answered but authentication was refused for user {target.username} "
        f"(tried {', '.join(tried)})",
    )


class SSHSession:
    """An authenticated SSH connection to one guest. Use as a context manager or call close()."""

    def __init__(
        self, transport: paramiko.Transport, target: SSHTarget, host_key: paramiko.PKey
    ) -> None:
        self._link = Link(transport, target.address)
        self._transfers = Transfers(self._link)
        self.target = target
        self.host_key = host_key
        self.host_key_fingerprint = fingerprint(host_key)
        self.server_version: str = transport.remote_version

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._link.transport.close()

    def is_alive(self) -> bool:
        return self._link.is_active()

    @property
    def sftp_missing(self) -> bool:
        """Whether the server turned out to have no SFTP subsystem (``cat`` is used then)."""
        return self._transfers.sftp_missing

    def run(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """See ``exec.run``: the exit status; output streamed to ``on_output(stream, line)``."""
        return ssh_exec.run(
            self._link, command, on_output=on_output, timeout=timeout, stdin=stdin, cancel=cancel
        )

    def run_capture(
        self,
        command: str,
        *,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """See ``exec.run_capture``: the exit status and raw output (kept in memory)."""
        return ssh_exec.run_capture(
            self._link, command, timeout=timeout, stdin=stdin, cancel=cancel
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
        """See ``Transfers.upload``: ``data`` written to ``remote_path`` with ``mode``."""
        self._transfers.upload(data, remote_path, mode=mode, timeout=timeout, cancel=cancel)

    def download(
        self,
        remote_path: str,
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """See ``Transfers.download``: the contents of ``remote_path``."""
        return self._transfers.download(remote_path, timeout=timeout, cancel=cancel)
