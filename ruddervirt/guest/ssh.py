"""SSH communicator for build VMs: wait for SSH, run commands with streamed output, transfer files.

Plain Python on top of paramiko (no Django). Guests are reached through loopback port forwards
only (QEMU user-mode ``hostfwd``), so targets must be loopback addresses.

Host keys: a build VM is fresh, so its host key is unknown by construction and there is nothing
to verify it against. We therefore accept the first key we see (trust on first use), expose its
fingerprint on the session, and pin it for every later connection to the same guest (after a
reboot, for instance): a different key then raises ``HostKeyMismatch``.

Sessions are not thread-safe: use one session from one thread (cancel events may be set from
any thread).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import hashlib
import io
import ipaddress
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, str], None]
CONNECT_TIMEOUT = 2.0
BANNER_TIMEOUT = 5.0  # how long one connection may wait for the server's first line
STAGGER = 1.0  # a fresh connection this often while earlier ones still wait for a banner
_MAX_PENDING = 8
HANDSHAKE_TIMEOUT = 30.0  # key exchange, and separately authentication, of one attempt
_CHUNK = 256 * 1024
_MAX_LINE = 64 * 1024  # a "line" longer than this (progress bars, binary noise) is emitted as is
_LINGER = 2.0  # how long to wait for the end of output once the exit status is known
_SLICE = 0.05  # how often blocking loops look at cancel events and deadlines


class GuestError(Exception):
    """Base class of every error raised by this module's public functions and methods
    (besides ValueError for invalid arguments)."""


class Cancelled(GuestError):
    """The caller's cancel event was set."""


class SSHWaitTimeout(GuestError):
    """SSH did not become usable in time; ``reason`` says why (the most informative failure)."""

    def __init__(self, message: str, *, reason: str, elapsed: float, attempts: int) -> None:
        super().__init__(message)
        self.reason, self.elapsed, self.attempts = reason, elapsed, attempts


class CommandTimeout(GuestError):
    """A command or transfer exceeded its timeout; its channel was closed."""


class ConnectionLost(GuestError):
    """The SSH connection died while an operation was in progress."""


class HostKeyMismatch(GuestError):
    """The guest presented a different host key than the one pinned for it."""


class TransferFailed(GuestError):
    """An upload or download failed in the guest (missing folder, no permission, ...)."""


# ---------------------------------------------------------------------------------------- keys


def generate_keypair(comment: str = "ruddervirt-build") -> tuple[str, str]:
    """Return a fresh ed25519 key pair: (private key in OpenSSH PEM format, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return private, f"{public} {comment}" if comment else public


_PARAMIKO_CLASSES: tuple[tuple[type, type[paramiko.PKey]], ...] = (
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (rsa.RSAPrivateKey, paramiko.RSAKey),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
)


def load_private_key(text: str | bytes, password: str | None = None) -> paramiko.PKey:
    """Parse an ed25519, RSA or ECDSA private key in OpenSSH or PEM (PKCS#1/#8, SEC1) format.

    Raises ValueError with a message that never contains key material.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    secret = password.encode("utf-8") if password is not None else None
    key: object
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, secret)
        else:
            key = serialization.load_pem_private_key(data, secret)
    except TypeError as exc:  # cryptography's way of saying "password missing / not needed"
        raise ValueError(f"cannot load private key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a usable private key: {exc}") from None
    for crypto_type, paramiko_type in _PARAMIKO_CLASSES:
        if isinstance(key, crypto_type):
            # Re-serialise to the OpenSSH format, the one every paramiko key class reads.
            openssh = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            return paramiko_type.from_private_key(io.StringIO(openssh.decode("ascii")))
    raise ValueError(f"unsupported key type {type(key).__name__}: use ed25519, RSA or ECDSA")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key, e.g. ``SHA256:abc...``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# -------------------------------------------------------------------------------------- target


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
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AttemptFailure:
    """Why one connection attempt failed. ``kind``: tcp, banner, handshake or auth."""

    kind: str
    message: str


_RANK = {"tcp": 0, "banner": 1, "handshake": 2, "auth": 3}


class _AttemptFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.failure = AttemptFailure(kind, message)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    """Sleep, waking up (and raising Cancelled) as soon as ``cancel`` is set."""
    if cancel is None:
        time.sleep(max(seconds, 0))
    elif cancel.wait(max(seconds, 0)):
        raise Cancelled("cancelled")


# ---------------------------------------------------------------------------------------- wait


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
            _check_cancel(cancel)
            attempt += 1
            # Every attempt gets at least a moment, even when it starts right at the deadline.
            deadline = max(started + timeout, time.monotonic() + 0.1)
            try:
                return _connect(target, race, deadline, cancel)
            except _AttemptFailed as exc:
                last = exc.failure
                if best is None or _RANK[last.kind] >= _RANK[best.kind]:
                    best = last
                if on_attempt is not None:
                    on_attempt(attempt, last)
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                raise _wait_timeout(target, best, last, elapsed, attempt)
            if not race.waiting:  # connections still in the race are being watched already
                _sleep(min(poll_interval, timeout - elapsed), cancel)
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


def _connect(
    target: SSHTarget,
    race: _BannerRace,
    deadline: float,
    cancel: threading.Event | None,
) -> SSHSession:
    """One attempt (a connection with a banner, handshake, authentication), bounded by
    ``deadline``."""

    def left() -> float:
        return max(deadline - time.monotonic(), 0.01)

    sock, banner = race.next_banner(deadline, cancel)
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
            except _AttemptFailed:
                _check_cancel(cancel)  # the failure may be our own closing of the transport
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
    while not done.wait(_SLICE):
        _check_cancel(cancel)
        if time.monotonic() > deadline:
            raise _AttemptFailed(
                "handshake",
                f"SSH server answered ({banner}) but the key exchange did not finish "
                f"within {timeout:.1f}s",
            )
    if not transport.is_active():
        reason = transport.get_exception() or "connection closed"
        raise _AttemptFailed(
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
        while not finished.wait(_SLICE):
            if cancel.is_set():
                transport.close()
                return

    threading.Thread(target=watch, name="ssh-cancel-watch", daemon=True).start()
    try:
        yield
    finally:
        finished.set()


def _tcp_connect(target: SSHTarget, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((target.host, target.port), timeout=timeout)
    except ConnectionRefusedError:
        detail = "connection refused"
    except TimeoutError:
        detail = f"connect timed out after {timeout:.1f}s"
    except OSError as exc:
        detail = exc.strerror or str(exc)
    raise _AttemptFailed("tcp", f"no TCP connection to {target.address} ({detail})")


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
        _AttemptFailed for the first connection that fails (refused, closed, silent for
        ``banner_timeout``); the others stay in the race for the next call."""
        while True:
            _check_cancel(cancel)
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
                raise _AttemptFailed(
                    "banner", f"TCP connects but no SSH banner within {waited:.1f}s"
                )
            wait = min(
                _SLICE * 4,
                self.pending[-1][1] + self.stagger - now,
                opened + self.banner_timeout - now,
                deadline - now,
            )
            readable, _, _ = select.select([s for s, _ in self.pending], [], [], max(wait, 0))
            for sock in readable:
                try:
                    data = sock.recv(256, socket.MSG_PEEK)
                except OSError as exc:
                    data, reason = b"", exc.strerror or str(exc)
                else:
                    reason = "closed by the other side"
                if not data:
                    self._drop(sock)
                    raise _AttemptFailed("banner", f"TCP connects but no SSH banner ({reason})")
                self._forget(sock)  # the caller owns it now
                return sock, data.split(b"\n", 1)[0].strip().decode("ascii", "replace")


def _check_pinned(expected: str | None, key: paramiko.PKey, target: SSHTarget) -> None:
    actual = fingerprint(key)
    if expected is not None and actual != expected:
        raise HostKeyMismatch(
            f"host key of {target.address} changed: expected {expected}, got {actual}"
        )


def _authenticate(transport: paramiko.Transport, target: SSHTarget) -> None:
    """Try the key, then the password; raise _AttemptFailed("auth") naming what was tried."""
    tried: list[str] = []
    attempts: list[tuple[str, Callable[[], object]]] = []
    if target.private_key is not None:
        key = target.private_key
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
            raise _AttemptFailed(
                "handshake", f"SSH server answered but dropped us during {method} auth: {exc}"
            ) from None
        if transport.is_authenticated():
            return
    raise _AttemptFailed(
        "auth",
        f"SSH server answered but authentication was refused for user {target.username} "
        f"(tried {', '.join(tried)})",
    )


# ------------------------------------------------------------------------------------- session


@dataclass(frozen=True)
class CommandResult:
    """Exit status and raw output of a command run with ``SSHSession.run_capture``."""

    exit_status: int
    stdout: bytes
    stderr: bytes


class _LineSplitter:
    """Turns byte chunks of one stream into decoded lines (utf-8, invalid bytes replaced)."""

    def __init__(self, stream: str, sink: OutputCallback) -> None:
        self._stream, self._sink = stream, sink
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> None:
        text = self._pending + self._decoder.decode(data)
        *lines, self._pending = text.split("\n")
        for line in lines:
            self._sink(self._stream, line.removesuffix("\r"))
        if len(self._pending) > _MAX_LINE:
            self._sink(self._stream, self._pending)
            self._pending = ""

    def flush(self) -> None:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        if rest:
            self._sink(self._stream, rest.removesuffix("\r"))


def _chunks_of(data: bytes | Path) -> Iterator[bytes]:
    """Yield ``data`` in chunks; files are read lazily so large ones never sit in memory."""
    if isinstance(data, Path):
        with data.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
    else:
        for start in range(0, len(data), _CHUNK):
            yield data[start : start + _CHUNK]


class SSHSession:
    """An authenticated SSH connection to one guest. Use as a context manager or call close()."""

    def __init__(
        self, transport: paramiko.Transport, target: SSHTarget, host_key: paramiko.PKey
    ) -> None:
        self._transport = transport
        self._sftp_missing = False
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
        self._transport.close()

    def is_alive(self) -> bool:
        return self._transport.is_active()

    def run(
        self,
        command: str,
        *,
        on_output: OutputCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Run ``command``; stream its output line by line to ``on_output(stream, line)``.

        ``stream`` is "stdout" or "stderr". Returns the exit status (-1 when the server closed
        the channel without one, e.g. the command died of a signal). Raises CommandTimeout,
        Cancelled (both after closing the channel) or ConnectionLost.
        """
        sink: OutputCallback = on_output or (lambda _stream, _line: None)
        out, err = _LineSplitter("stdout", sink), _LineSplitter("stderr", sink)
        chunks = None if stdin is None else _chunks_of(stdin)
        status = self._exec(command, chunks, out.feed, err.feed, timeout, cancel)
        out.flush()
        err.flush()
        return status

    def run_capture(
        self,
        command: str,
        *,
        timeout: float | None = None,
        stdin: bytes | Path | None = None,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """Run ``command`` and return its exit status and raw output (kept in memory)."""
        out, err = bytearray(), bytearray()
        chunks = None if stdin is None else _chunks_of(stdin)
        status = self._exec(command, chunks, out.extend, err.extend, timeout, cancel)
        return CommandResult(status, bytes(out), bytes(err))

    def _exec(
        self,
        command: str,
        stdin: Iterable[bytes] | None,
        on_stdout: Callable[[bytes], object],
        on_stderr: Callable[[bytes], object],
        timeout: float | None,
        cancel: threading.Event | None,
    ) -> int:
        chan = self._open_channel(timeout)
        finished = False
        try:
            chan.exec_command(command)
            self._pump(chan, _StdinFeeder(chan, stdin), on_stdout, on_stderr, timeout, cancel)
            finished = True
            return self._exit_status(chan, command)
        except CommandTimeout:
            raise CommandTimeout(f"command timed out after {timeout:g}s: {command[:200]}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._ssh_error(exc, f"running {command[:200]}") from exc
        finally:
            # Wait for the server's close only after a normal end (see _close_channel).
            _close_channel(chan, wait=2.0 if finished and chan.eof_received else 0.0)

    def _pump(
        self,
        chan: paramiko.Channel,
        feeder: _StdinFeeder,
        on_stdout: Callable[[bytes], object],
        on_stderr: Callable[[bytes], object],
        timeout: float | None,
        cancel: threading.Event | None,
    ) -> None:
        """Move stdin and output until the command is over and its output read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        exited_at: float | None = None
        while True:
            while chan.recv_ready():
                on_stdout(chan.recv(_CHUNK))
            while chan.recv_stderr_ready():
                on_stderr(chan.recv_stderr(_CHUNK))
            if exited_at is None and chan.exit_status_ready():
                exited_at = time.monotonic()
            if self._is_over(chan, exited_at):
                if not (chan.recv_ready() or chan.recv_stderr_ready()):
                    return
                continue
            feeder.feed()
            _check_cancel(cancel)
            if deadline is not None and time.monotonic() > deadline:
                raise CommandTimeout("timed out")  # _exec words the message
            _wait_for_activity(chan, feeder)

    def _is_over(self, chan: paramiko.Channel, exited_at: float | None) -> bool:
        """Whether no more output will come. After the exit status, output normally ends with
        EOF; a background process that inherited the pipes can hold them open forever (OpenSSH
        waits for it), so we stop waiting _LINGER s after the exit status."""
        if chan.closed or not self._transport.is_active():
            return True
        if exited_at is None:
            return False
        return chan.eof_received or time.monotonic() - exited_at > _LINGER

    def _exit_status(self, chan: paramiko.Channel, command: str) -> int:
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        if status == -1 and self._transport_died():
            raise ConnectionLost(
                f"connection to {self.target.address} lost while running {command[:200]}"
            )
        return status

    def _transport_died(self) -> bool:
        """Whether the connection is dead; waits briefly because paramiko closes the channels
        of a dying transport a moment before it marks the transport inactive."""
        for _ in range(10):
            if not self._transport.is_active():
                return True
            time.sleep(_SLICE)
        return False

    def _open_channel(self, timeout: float | None) -> paramiko.Channel:
        try:
            return self._transport.open_session(timeout=min(timeout or 30.0, 30.0))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._ssh_error(exc, "opening a channel") from exc

    def _ssh_error(self, exc: BaseException, doing: str) -> GuestError:
        """The GuestError for a low-level failure: ConnectionLost if the connection is gone."""
        if not self._transport.is_active():
            return ConnectionLost(f"connection to {self.target.address} lost while {doing}: {exc}")
        return GuestError(f"SSH error while {doing}: {exc}")

    # --------------------------------------------------------------------------- transfers

    def upload(
        self,
        data: bytes | Path,
        remote_path: str,
        *,
        mode: int = 0o644,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Write ``data`` (bytes, or a local file that is streamed) to ``remote_path``, ``mode``.

        Uses SFTP; without an SFTP subsystem, ``cat > path`` over exec. Raises TransferFailed
        (e.g. missing folder), CommandTimeout, Cancelled, ConnectionLost; OSError when the
        local file cannot be read.
        """
        if isinstance(data, Path):
            data.stat()  # a missing local file is our problem: say so before touching the guest
        what = f"upload to {remote_path}"
        sftp = self._open_sftp(timeout)
        if sftp is None:
            quoted = shlex.quote(remote_path)
            # umask first: the file never exists with looser permissions than asked for.
            command = f"umask 077 && cat > {quoted} && chmod {mode:o} {quoted}"
            self._checked(what, command, timeout, cancel, stdin=data)
            return
        guard = _transfer_guard(timeout, cancel, what)
        try:
            with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as source:
                self._sftp_call(what, _sftp_put, sftp, source, remote_path, mode, guard)
        finally:
            _close_channel(sftp.get_channel(), wait=2.0)

    def download(
        self,
        remote_path: str,
        *,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """Return the contents of ``remote_path`` (SFTP, or ``cat`` without SFTP)."""
        what = f"download of {remote_path}"
        sftp = self._open_sftp(timeout)
        if sftp is None:
            return self._checked(what, f"cat -- {shlex.quote(remote_path)}", timeout, cancel)
        buffer = io.BytesIO()
        try:
            guard = _transfer_guard(timeout, cancel, what)
            self._sftp_call(what, sftp.getfo, remote_path, buffer, callback=guard)
        finally:
            _close_channel(sftp.get_channel(), wait=2.0)
        return buffer.getvalue()

    def _checked(
        self,
        what: str,
        command: str,
        timeout: float | None,
        cancel: threading.Event | None,
        stdin: bytes | Path | None = None,
    ) -> bytes:
        result = self.run_capture(command, timeout=timeout, stdin=stdin, cancel=cancel)
        if result.exit_status != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise TransferFailed(f"{what} failed (exit status {result.exit_status}): {stderr}")
        return result.stdout

    def _open_sftp(self, timeout: float | None) -> paramiko.SFTPClient | None:
        """An SFTP client, or None when the server has no (working) SFTP subsystem."""
        if self._sftp_missing:
            return None
        chan = self._open_channel(timeout)
        chan.settimeout(min(timeout or 30.0, 30.0))  # bounds each SFTP request, not the transfer
        try:
            chan.invoke_subsystem("sftp")
            return paramiko.SFTPClient(chan)
        except (paramiko.SSHException, paramiko.SFTPError, EOFError, OSError) as exc:
            chan.close()
            if not self._transport.is_active():
                raise self._ssh_error(exc, "opening SFTP") from exc
            # A refused subsystem (OpenSSH without a Subsystem line) and one that exits at once
            # (dropbear without sftp-server) both mean "no SFTP here"; remember it.
            log.info("no SFTP on %s (%s); using cat over exec", self.target.address, exc)
            self._sftp_missing = True
            return None

    def _sftp_call(
        self, what: str, func: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        try:
            func(*args, **kwargs)
        except TimeoutError as exc:
            raise CommandTimeout(f"{what}: SFTP request timed out") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self._transport.is_active():
                raise self._ssh_error(exc, what) from exc
            raise TransferFailed(f"{what} failed: {exc}") from exc


def _sftp_put(
    sftp: paramiko.SFTPClient,
    source: BinaryIO,
    remote_path: str,
    mode: int,
    guard: Callable[[int, int], None],
) -> None:
    with sftp.file(remote_path, "wb") as remote:
        remote.chmod(mode)  # before any byte is written: secrets never sit readable by others
        remote.set_pipelined(True)
        done = 0
        while chunk := source.read(32768):
            remote.write(chunk)
            done += len(chunk)
            guard(done, 0)


def _transfer_guard(
    timeout: float | None, cancel: threading.Event | None, what: str
) -> Callable[[int, int], None]:
    """A paramiko progress callback that aborts the transfer on timeout or cancel."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def check(_done: int, _total: int) -> None:
        _check_cancel(cancel)
        if deadline is not None and time.monotonic() > deadline:
            raise CommandTimeout(f"{what} timed out after {timeout:g}s")

    return check


def _close_channel(chan: paramiko.Channel, *, wait: float) -> None:
    """Close ``chan``, first sending EOF and giving the server ``wait`` s to close it itself.

    Why: dropbear 2022.83 (Debian 12's, used by the tiny test guests) kills the whole connection
    when a channel is opened while it is still handling the exit of an earlier channel's process
    (mkj/dropbear#321, fixed in 2024.86). A server closes a session channel only once its process
    is gone, so waiting for that close keeps the next channel out of the race window.
    """
    deadline = time.monotonic() + wait
    with contextlib.suppress(paramiko.SSHException, OSError):
        chan.shutdown_write()  # EOF lets sftp-server (and anything reading stdin) exit
    transport = chan.get_transport()
    while not chan.closed and time.monotonic() < deadline and transport.is_active():
        time.sleep(0.005)
    chan.close()


def _wait_for_activity(chan: paramiko.Channel, feeder: _StdinFeeder) -> None:
    """Block for at most _SLICE until the channel has something for us."""
    if feeder.pending:
        return  # feed() already waited for window space
    if chan.eof_received:
        # No more output will come, but the channel's fd stays readable after EOF: wait for
        # the exit status (or the close) instead of spinning on select.
        chan.status_event.wait(_SLICE)
    else:
        select.select([chan], [], [], _SLICE)


class _StdinFeeder:
    """Sends stdin chunks to a channel a little at a time, so output keeps being read.

    When the remote window is full it waits for it for at most _SLICE: that wait (woken by the
    window adjustment) paces the run loop while input is pending, instead of a fixed sleep that
    would cap throughput on servers with small windows (dropbear: 24 KiB).
    """

    def __init__(self, chan: paramiko.Channel, chunks: Iterable[bytes] | None) -> None:
        self._chan = chan
        self._chunks = None if chunks is None else iter(chunks)
        self._chunk = b""
        self._offset = 0
        if self._chunks is None:
            chan.shutdown_write()
        chan.settimeout(_SLICE)  # bounds send()'s wait for window space

    @property
    def pending(self) -> bool:
        return self._chunks is not None

    def feed(self) -> None:
        sent = 0
        while self._chunks is not None and sent < _CHUNK:
            if self._offset >= len(self._chunk):
                following = next(self._chunks, None)
                if following is None:
                    self._chunks = None
                    self._chan.shutdown_write()  # EOF for the remote command's stdin
                    return
                self._chunk, self._offset = following, 0
                continue
            try:
                n = self._chan.send(self._chunk[self._offset : self._offset + 32768])
            except TimeoutError:
                return  # window still full; output gets read, then we try again
            except OSError:  # the command stopped reading (channel closing): drop the rest
                self._chunks = None
                return
            self._offset += n
            sent += n
