"""The communicator against OpenSSH's sshd (the server of cloud images), on loopback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ruddervirt.guest.shellscript import build_shell_command, run_shell_script
from ruddervirt.guest.ssh import ConnectionLost, SSHTarget, SSHWaitTimeout, wait_for_ssh
from ruddervirt.guest.ssh import exec as ssh_exec

pytestmark = pytest.mark.sshserver


@pytest.fixture
def session(openssh, keys):
    target = SSHTarget(port=openssh.port, username="root", private_key=keys.private)
    with wait_for_ssh(target, timeout=10) as opened:
        yield opened


def test_connects_and_records_the_host_key(openssh, session) -> None:
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{openssh.host_key}.pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert session.host_key_fingerprint == listing.split()[1]
    assert session.server_version.startswith("SSH-2.0-OpenSSH")


def test_password_login(openssh, root_password) -> None:
    target = SSHTarget(port=openssh.port, username="root", password=root_password)
    with wait_for_ssh(target, timeout=10) as opened:
        assert opened.run("true") == 0


def test_refused_authentication_is_reported(openssh, keys) -> None:
    target = SSHTarget(
        port=openssh.port, username="root", private_key=keys.other_private, password="nope"
    )
    with pytest.raises(
        SSHWaitTimeout, match=r"refused for user root \(tried publickey, password\)"
    ):
        wait_for_ssh(target, timeout=0.2)


def test_run_streams_and_returns_status(session) -> None:
    lines: list[tuple[str, str]] = []
    status = session.run(
        "echo a; sleep 0.1; echo b >&2; sleep 0.1; printf c; exit 5",
        on_output=lambda stream, line: lines.append((stream, line)),
    )
    assert status == 5
    assert lines == [("stdout", "a"), ("stderr", "b"), ("stdout", "c")]


def test_background_process_holding_the_output_open_does_not_hang_the_run(
    session, monkeypatch
) -> None:
    monkeypatch.setattr(ssh_exec, "_LINGER", 0.5)  # 2 s in production; keep the suite fast
    lines: list[str] = []
    started = time.monotonic()
    status = session.run("sleep 8 & echo started", on_output=lambda _s, line: lines.append(line))
    assert (status, lines) == (0, ["started"])
    assert 0.4 < time.monotonic() - started < 2.5  # gave the output time to end, then moved on


def test_sftp_upload_and_download(session, workdir: Path) -> None:
    session.upload(b"data", str(workdir / "f"), mode=0o700)
    assert (workdir / "f").stat().st_mode & 0o777 == 0o700
    assert session.download(str(workdir / "f")) == b"data"
    assert session.sftp_missing is False


def test_refused_sftp_subsystem_falls_back_to_cat(openssh_without_sftp, keys, workdir) -> None:
    target = SSHTarget(port=openssh_without_sftp.port, username="root", private_key=keys.private)
    with wait_for_ssh(target, timeout=10) as opened:
        opened.upload(b"via cat", str(workdir / "f"), mode=0o600)
        assert opened.sftp_missing is True
        assert (workdir / "f").read_bytes() == b"via cat"
        assert (workdir / "f").stat().st_mode & 0o777 == 0o600
        assert opened.download(str(workdir / "f")) == b"via cat"


def test_shell_step_semantics(session) -> None:
    prepared = build_shell_command(
        'echo "$GREETING"\nfalse\necho unreachable\n',
        env={"GREETING": 'it\'s "me"'},
        execute_command="sh -c '{{ .Command }}'",
    )
    lines: list[str] = []
    status = run_shell_script(session, prepared, on_output=lambda _s, line: lines.append(line))
    assert (status, lines) == (1, ['it\'s "me"'])
    assert not Path(prepared.remote_path).exists()


def test_connection_dropped_mid_command(session) -> None:
    with pytest.raises(ConnectionLost):
        session.run("kill -9 $PPID; sleep 5", timeout=10)
