"""Running commands over an SSH connection, their output streamed line by line.

``Link`` is one authenticated connection (a paramiko transport) as the exec and transfer code
use it: open a channel, word a low-level failure. ``run`` and ``run_capture`` execute one
command on it; stdin is fed a little at a time so output keeps being read.
"""

from __future__ import annotations

import codecs
import contextlib
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ruddervirt.guest.communicator import OutputCallback
from ruddervirt.guest.errors import CommandTimeout, ConnectionLost, GuestError
from ruddervirt.guest.ssh.cancel import SLICE, check_cancel

_CHUNK = 256 * 1024
_MAX_LINE = 64 * 1024  # a "line" longer than this (progress bars, binary noise) is emitted as is
_LINGER = 2.0  # how long to wait for the end of output once the exit status is known


@dataclass(frozen=True)
class CommandResult:
    """Exit status and raw output of a command run with ``SSHSession.run_capture``."""

    exit_status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class Link:
    """One authenticated SSH connection to the guest at ``address``."""

    transport: paramiko.Transport
    address: str

    def is_active(self) -> bool:
        return self.transport.is_active()

    def open_channel(self, timeout: float | None) -> paramiko.Channel:
        """A new session channel; GuestError (ConnectionLost when the link is gone)."""
        try:
            return self.transport.open_session(timeout=min(timeout or 30.0, 30.0))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self.error(exc, "opening a channel") from exc

    def error(self, exc: BaseException, doing: str) -> GuestError:
        """The GuestError for a low-level failure: ConnectionLost if the connection is gone."""
        if not self.transport.is_active():
            return ConnectionLost(f"connection to {self.address} lost while {doing}: {exc}")
        return GuestError(f"SSH error while {doing}: {exc}")

    def died(self) -> bool:
        """Whether the connection is dead; waits briefly because paramiko closes the channels
        of a dying transport a moment before it marks the transport inactive."""
        for _ in range(10):
            if not self.transport.is_active():
                return True
            time.sleep(SLICE)
        return False


def run(
    link: Link,
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
    status = _exec(link, command, chunks, out.feed, err.feed, timeout, cancel)
    out.flush()
    err.flush()
    return status


def run_capture(
    link: Link,
    command: str,
    *,
    timeout: float | None = None,
    stdin: bytes | Path | None = None,
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run ``command`` and return its exit status and raw output (kept in memory)."""
    out, err = bytearray(), bytearray()
    chunks = None if stdin is None else _chunks_of(stdin)
    status = _exec(link, command, chunks, out.extend, err.extend, timeout, cancel)
    return CommandResult(status, bytes(out), bytes(err))


def _exec(
    link: Link,
    command: str,
    stdin: Iterable[bytes] | None,
    on_stdout: Callable[[bytes], object],
    on_stderr: Callable[[bytes], object],
    timeout: float | None,
    cancel: threading.Event | None,
) -> int:
    chan = link.open_channel(timeout)
    finished = False
    try:
        chan.exec_command(command)
        _pump(link, chan, _StdinFeeder(chan, stdin), on_stdout, on_stderr, timeout, cancel)
        finished = True
        return _exit_status(link, chan, command)
    except CommandTimeout:
        raise CommandTimeout(f"command timed out after {timeout:g}s: {command[:200]}") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise link.error(exc, f"running {command[:200]}") from exc
    finally:
        # Wait for the server's close only after a normal end (see close_channel).
        close_channel(chan, wait=2.0 if finished and chan.eof_received else 0.0)


def _pump(
    link: Link,
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
        if _is_over(link, chan, exited_at):
            if not (chan.recv_ready() or chan.recv_stderr_ready()):
                return
            continue
        feeder.feed()
        check_cancel(cancel)
        if deadline is not None and time.monotonic() > deadline:
            raise CommandTimeout("timed out")  # _exec words the message
        _wait_for_activity(chan, feeder)


def _is_over(link: Link, chan: paramiko.Channel, exited_at: float | None) -> bool:
    """Whether no more output will come. After the exit status, output normally ends with
    EOF; a background process that inherited the pipes can hold them open forever (OpenSSH
    waits for it), so we stop waiting _LINGER s after the exit status."""
    if chan.closed or not link.is_active():
        return True
    if exited_at is None:
        return False
    return bool(chan.eof_received) or time.monotonic() - exited_at > _LINGER


def _exit_status(link: Link, chan: paramiko.Channel, command: str) -> int:
    status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    if status == -1 and link.died():
        raise ConnectionLost(f"connection to {link.address} lost while running {command[:200]}")
    return status


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


def close_channel(chan: paramiko.Channel | None, *, wait: float) -> None:
    """Close ``chan``, first sending EOF and giving the server ``wait`` s to close it itself
    (None, an SFTP client without a channel: nothing to close).

    Why: dropbear 2022.83 (Debian 12's, used by the tiny test guests) kills the whole connection
    when a channel is opened while it is still handling the exit of an earlier channel's process
    (mkj/dropbear#321, fixed in 2024.86). A server closes a session channel only once its process
    is gone, so waiting for that close keeps the next channel out of the race window.
    """
    if chan is None:
        return
    deadline = time.monotonic() + wait
    with contextlib.suppress(paramiko.SSHException, OSError):
        chan.shutdown_write()  # EOF lets sftp-server (and anything reading stdin) exit
    transport = chan.get_transport()
    while not chan.closed and time.monotonic() < deadline and transport.is_active():
        time.sleep(0.005)
    chan.close()


def _wait_for_activity(chan: paramiko.Channel, feeder: _StdinFeeder) -> None:
    """Block for at most SLICE until the channel has something for us."""
    if feeder.pending:
        return  # feed() already waited for window space
    if chan.eof_received:
        # No more output will come, but the channel's fd stays readable after EOF: wait for
        # the exit status (or the close) instead of spinning on select.
        chan.status_event.wait(SLICE)
    else:
        select.select([chan], [], [], SLICE)


class _StdinFeeder:
    """Sends stdin chunks to a channel a little at a time, so output keeps being read.

    When the remote window is full it waits for it for at most SLICE: that wait (woken by the
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
        chan.settimeout(SLICE)  # bounds send()'s wait for window space

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
