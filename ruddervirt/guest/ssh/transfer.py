"""File transfers over an SSH connection: SFTP, or ``cat`` over exec where the server has no
SFTP subsystem (dropbear without sftp-server)."""

from __future__ import annotations

import io
import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import paramiko

from ruddervirt.guest.errors import CommandTimeout, TransferFailed
from ruddervirt.guest.ssh import exec as ssh_exec
from ruddervirt.guest.ssh.cancel import check_cancel
from ruddervirt.guest.ssh.exec import Link, close_channel

log = logging.getLogger(__name__)


class Transfers:
    """Uploads and downloads on one connection; remembers when the server has no SFTP."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._sftp_missing = False

    @property
    def sftp_missing(self) -> bool:
        """Whether the server turned out to have no SFTP subsystem (``cat`` is used then)."""
        return self._sftp_missing

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
            close_channel(sftp.get_channel(), wait=2.0)

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
            close_channel(sftp.get_channel(), wait=2.0)
        return buffer.getvalue()

    def _checked(
        self,
        what: str,
        command: str,
        timeout: float | None,
        cancel: threading.Event | None,
        stdin: bytes | Path | None = None,
    ) -> bytes:
        result = ssh_exec.run_capture(
            self._link, command, timeout=timeout, stdin=stdin, cancel=cancel
        )
        if result.exit_status != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise TransferFailed(f"{what} failed (exit status {result.exit_status}): {stderr}")
        return result.stdout

    def _open_sftp(self, timeout: float | None) -> paramiko.SFTPClient | None:
        """An SFTP client, or None when the server has no (working) SFTP subsystem."""
        if self._sftp_missing:
            return None
        chan = self._link.open_channel(timeout)
        chan.settimeout(min(timeout or 30.0, 30.0))  # bounds each SFTP request, not the transfer
        try:
            chan.invoke_subsystem("sftp")
            return paramiko.SFTPClient(chan)
        except (paramiko.SSHException, paramiko.SFTPError, EOFError, OSError) as exc:
            chan.close()
            if not self._link.is_active():
                raise self._link.error(exc, "opening SFTP") from exc
            # A refused subsystem (OpenSSH without a Subsystem line) and one that exits at once
            # (dropbear without sftp-server) both mean "no SFTP here"; remember it.
            log.info("no SFTP on %s (%s); using cat over exec", self._link.address, exc)
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
            if not self._link.is_active():
                raise self._link.error(exc, what) from exc
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
        check_cancel(cancel)
        if deadline is not None and time.monotonic() > deadline:
            raise CommandTimeout(f"{what} timed out after {timeout:g}s")

    return check
