"""The attack: a local user (a QEMU process broken out of its guest runs as libvirt-qemu) puts a
pickled job into RQ's queues, and a worker unpickles it as root. RudderVirt's Redis refuses:
only root may open its socket, and even root needs the password, which only root can read.

The first tests ask the Redis the portal is configured with (settings); the others run
scripts/redis.sh, what setup runs, on a folder of their own and stop that Redis again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

REDIS_SH = Path(__file__).resolve().parents[2] / "scripts" / "redis.sh"
NOBODY = 65534
REFUSED = (redis.AuthenticationError, redis.ResponseError)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs Redis as root, like setup")


def test_the_portals_redis_refuses_a_client_without_the_password() -> None:
    with pytest.raises(REFUSED) as refused:
        redis.from_url(settings.REDIS_URL, socket_timeout=5).ping()
    assert "auth" in str(refused.value).lower()


def test_the_portals_queues_log_in_with_the_password_kept_out_of_the_url() -> None:
    import django_rq

    assert django_rq.get_connection("default").ping()
    assert settings.REDIS_PASSWORD and settings.REDIS_PASSWORD not in settings.REDIS_URL


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def setup_redis(var: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REDIS_SH), str(var)], capture_output=True, text=True, timeout=60, check=False
    )


def alive(pid: int) -> bool:
    """Running (a daemon's zombie, waiting for init to reap it, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_redis(var: Path) -> None:
    """Stop the Redis this test started (its pid is in var/redis.pid)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int((var / "redis.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def own_redis() -> Iterator[Path]:
    """var/ as setup leaves it: in a 0711 folder, itself 0711 (a unix socket path must stay
    short, hence /tmp rather than pytest's deep tmp_path)."""
    parent = Path(tempfile.mkdtemp(prefix="rv-redis-"))
    parent.chmod(0o711)
    var = parent / "var"
    try:
        done = setup_redis(var)
        assert done.returncode == 0, done.stderr
        var.chmod(0o711)
        yield var
    finally:
        stop_redis(var)
        shutil.rmtree(parent, ignore_errors=True)


@needs_root
def test_setup_creates_the_password_and_the_socket_private_from_the_start(own_redis) -> None:
    assert mode(own_redis / "redis-password") == 0o600
    assert mode(own_redis / "redis.sock") == 0o700
    assert len((own_redis / "redis-password").read_text().strip()) == 64
    pid = (own_redis / "redis.pid").read_text().strip()
    # The password is never on a command line.
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert (own_redis / "redis-password").read_text().strip() not in cmdline


@needs_root
def test_a_client_without_the_password_is_refused(own_redis) -> None:
    with pytest.raises(REFUSED):
        redis.Redis(unix_socket_path=str(own_redis / "redis.sock"), socket_timeout=5).ping()
    password = (own_redis / "redis-password").read_text().strip()
    with pytest.raises(REFUSED):
        redis.Redis(unix_socket_path=str(own_redis / "redis.sock"), password="x" + password).ping()
    logged_in = redis.Redis(unix_socket_path=str(own_redis / "redis.sock"), password=password)
    assert logged_in.ping()


@needs_root
def test_no_user_but_root_can_even_open_the_socket(own_redis) -> None:
    child = os.fork()
    if child == 0:  # the child becomes nobody and tries, then reports by exit status
        code = 2
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(own_redis / "redis.sock"))
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 13


@needs_root
def test_no_tcp_port_is_open(own_redis) -> None:
    password = (own_redis / "redis-password").read_text().strip()
    client = redis.Redis(unix_socket_path=str(own_redis / "redis.sock"), password=password)
    assert client.config_get("port") == {"port": "0"}


@needs_root
def test_setup_run_again_keeps_the_password_and_the_server(own_redis) -> None:
    password = (own_redis / "redis-password").read_text()
    pid = (own_redis / "redis.pid").read_text()
    done = setup_redis(own_redis)
    assert done.returncode == 0, done.stderr
    assert (own_redis / "redis-password").read_text() == password
    assert (own_redis / "redis.pid").read_text() == pid


@needs_root
def test_a_redis_answering_with_another_password_is_reported_not_replaced(own_redis) -> None:
    original = (own_redis / "redis-password").read_text()
    (own_redis / "redis-password").write_text("not-the-password\n")
    try:
        done = setup_redis(own_redis)
    finally:
        (own_redis / "redis-password").write_text(original)
    assert done.returncode == 1
    assert "not with the password" in done.stderr
    assert redis.Redis(
        unix_socket_path=str(own_redis / "redis.sock"), password=original.strip()
    ).ping()
