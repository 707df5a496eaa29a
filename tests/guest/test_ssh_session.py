"""SSHSession.run / upload / download against real loopback dropbear servers."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import paramiko
import pytest

from ruddervirt.guest.ssh import (
    Cancelled,
    CommandTimeout,
    ConnectionLost,
    SSHTarget,
    TransferFailed,
    wait_for_ssh,
)

pytestmark = pytest.mark.sshserver


def collect(session, command: str, **kwargs) -> tuple[int, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    status = session.run(command, on_output=lambda s, line: lines.append((s, line)), **kwargs)
    return status, lines


def test_run_streams_interleaved_lines_in_order_and_flushes_partial_line(session) -> None:
    command = "echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2; printf 'no newline'"
    status, lines = collect(session, command)
    assert status == 0
    assert lines == [
        ("stdout", "out1"),
        ("stderr", "err1"),
        ("stdout", "out2"),
        ("stdout", "no newline"),
    ]


@pytest.mark.parametrize("code", [0, 1, 3, 42])
def test_run_returns_the_exit_status(session, code: int) -> None:
    assert session.run(f"exit {code}") == code


def test_run_delivers_lines_while_the_command_is_still_running(session) -> None:
    started = time.monotonic()
    arrivals: dict[str, float] = {}
    session.run(
        "echo first; sleep 0.6; echo second",
        on_output=lambda _s, line: arrivals.setdefault(line, time.monotonic() - started),
    )
    assert arrivals["first"] < 0.4 < arrivals["second"]


def test_run_decodes_invalid_utf8_with_replacement_and_handles_crlf(session) -> None:
    status, lines = collect(session, r"printf 'caf\303\251 \377ok\r\nnext\n'")
    assert status == 0
    assert lines == [("stdout", "café \ufffdok"), ("stdout", "next")]


def test_run_splits_multibyte_characters_across_reads_correctly(session) -> None:
    status, lines = collect(session, "for i in $(seq 1 20000); do printf 'é'; done; echo")
    assert status == 0
    assert lines == [("stdout", "é" * 20000)]


def test_run_feeds_stdin(session) -> None:
    status, lines = collect(session, "tr a-z A-Z", stdin=b"hello\nworld\n")
    assert (status, lines) == (0, [("stdout", "HELLO"), ("stdout", "WORLD")])


def test_run_capture_with_large_stdin_and_output_does_not_deadlock(session) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    result = session.run_capture("cat; cat /dev/null >&2", stdin=payload, timeout=20)
    assert result.exit_status == 0
    assert result.stdout == payload


def test_run_timeout_raises_and_closes_the_channel(session) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 0\.5s"):
        session.run("sleep 10", timeout=0.5)
    assert time.monotonic() - started < 2
    assert session.run("true") == 0  # the session is still usable


def test_run_cancel_raises_promptly(session) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        session.run("sleep 10", cancel=cancel)
    assert time.monotonic() - started < 1.5


def test_connection_dropped_mid_command_raises_connection_lost(session) -> None:
    # $PPID of the command's shell is the dropbear process serving this connection.
    with pytest.raises(ConnectionLost):
        session.run("echo going; kill -9 $PPID; sleep 5", timeout=10)
    assert not session.is_alive()


def test_upload_and_download_over_sftp(session, workdir: Path) -> None:
    remote = str(workdir / "file with 'quote'.txt")
    session.upload(b"payload\x00\xff", remote, mode=0o600)
    assert Path(remote).read_bytes() == b"payload\x00\xff"
    assert Path(remote).stat().st_mode & 0o777 == 0o600
    assert session.download(remote) == b"payload\x00\xff"
    assert session.sftp_missing is False


def test_upload_of_a_local_file_over_sftp(session, workdir: Path) -> None:
    local = workdir / "local.bin"
    local.write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    session.upload(local, str(workdir / "remote.bin"), mode=0o755)
    assert (workdir / "remote.bin").read_bytes() == local.read_bytes()
    assert (workdir / "remote.bin").stat().st_mode & 0o777 == 0o755


def test_upload_to_a_missing_folder_fails_clearly(session, workdir: Path) -> None:
    with pytest.raises(TransferFailed, match=r"upload to .*/missing/x failed"):
        session.upload(b"x", str(workdir / "missing" / "x"))


@pytest.fixture
def session_without_sftp(server_without_sftp, keys):
    target = SSHTarget(port=server_without_sftp.port, username="root", private_key=keys.private)
    with wait_for_ssh(target, timeout=10) as opened:
        yield opened


def test_upload_falls_back_to_cat_without_sftp_subsystem(session_without_sftp, workdir) -> None:
    remote = str(workdir / "it's a file; $(touch pwned).txt")
    session_without_sftp.upload(b"one\ntwo\n", remote, mode=0o640)
    assert session_without_sftp.sftp_missing is True
    assert Path(remote).read_bytes() == b"one\ntwo\n"
    assert Path(remote).stat().st_mode & 0o777 == 0o640
    assert not (workdir / "pwned").exists()
    assert session_without_sftp.download(remote) == b"one\ntwo\n"


def test_fallback_upload_streams_a_large_file(session_without_sftp, workdir: Path) -> None:
    local = workdir / "big.bin"
    with local.open("wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(1024 * 1024))
    remote = workdir / "big-remote.bin"
    session_without_sftp.upload(local, str(remote), mode=0o600, timeout=30)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest


def test_fallback_errors_are_reported(session_without_sftp, workdir: Path) -> None:
    with pytest.raises(TransferFailed, match="exit status 1"):
        session_without_sftp.upload(b"x", str(workdir / "missing" / "x"))
    with pytest.raises(TransferFailed, match="No such file"):
        session_without_sftp.download(str(workdir / "missing" / "x"))


def test_refused_sftp_subsystem_request_also_falls_back(session, workdir, monkeypatch) -> None:
    # OpenSSH without a Subsystem line refuses the request instead of starting a program.
    def refuse(self, subsystem):
        raise paramiko.SSHException(f"subsystem {subsystem} refused")

    monkeypatch.setattr(paramiko.Channel, "invoke_subsystem", refuse)
    session.upload(b"via cat", str(workdir / "f"), mode=0o600)
    assert session.sftp_missing is True
    assert (workdir / "f").read_bytes() == b"via cat"
