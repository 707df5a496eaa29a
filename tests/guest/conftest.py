"""Real SSH servers on loopback for the guest tests.

Each server is dropbear (what the tiny test guests run) or OpenSSH's sshd (what cloud images
run), as root inside its own mount and PID namespaces (``unshare --mount --pid --fork
--kill-child``), listening on 127.0.0.1 only:

* a temporary folder is bind-mounted over /root, so the server reads our authorized_keys and the
  machine's real /root/.ssh is never touched;
* a copy of /etc/shadow with a known root password is bind-mounted over /etc/shadow;
* "no SFTP": for dropbear, a failing program is bind-mounted over the sftp-server binary (what a
  guest without sftp-server looks like); sshd simply gets no Subsystem line (it refuses);
* killing unshare kills the namespace's PID 1 (the server) and with it every session process.

Commands therefore run as the real root on this machine: tests only touch their own temp files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ruddervirt.guest.ssh import SSHSession, SSHTarget, generate_keypair, wait_for_ssh

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")  # dropbear runs /usr/lib/sftp-server -> this
ROOT_PASSWORD = "rudder-test-pw"
_WRAPPER = """#!/bin/sh
# usage: wrapper HOME SHADOW REPLACEMENT|- REPLACED COMMAND...
set -e
mount --bind "$1" /root
mount --bind "$2" /etc/shadow
if [ "$3" != "-" ]; then mount --bind "$3" "$4"; fi
shift 4
exec "$@"
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sshserver: needs a real SSH server on loopback (dropbear, run as root)"
    )


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dropbear in a private mount namespace)"
    return None


def _require(program: str) -> None:
    """Setup installs every program of scripts/packages.txt: one missing is a broken setup,
    which a skip would hide (it did: the OpenSSH tests were skipped for a whole round)."""
    if shutil.which(program, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
        pytest.fail(f"{program} is missing: scripts/setup.sh installs it (scripts/packages.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_host_key(path: Path) -> None:
    """An ed25519 host key in the format of the server that will use it."""
    if path.name.startswith("dropbear"):
        args = ["dropbearkey", "-t", "ed25519", "-f", str(path)]
    else:
        args = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=30)


_SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
"""


@dataclass
class SSHServer:
    """One SSH server ("dropbear" or "openssh") in its own namespaces; stop() and start()
    simulate a guest going down and coming back."""

    workdir: Path
    port: int
    sftp: bool = True
    kind: str = "dropbear"
    host_key: Path = field(init=False)
    log: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.host_key = self.workdir / f"{self.kind}_host_ed25519"
        self.log = self.workdir / "server.log"
        make_host_key(self.host_key)

    def _server_args(self) -> list[str]:
        if self.kind == "dropbear":
            args = ["dropbear", "-F", "-E", "-m", "-p", f"127.0.0.1:{self.port}"]
            return [*args, "-r", str(self.host_key), "-P", str(self.workdir / "dropbear.pid")]
        config = self.workdir / "sshd_config"
        text = _SSHD_CONFIG.format(port=self.port, host_key=self.host_key)
        # Without a Subsystem line OpenSSH refuses the sftp subsystem request.
        config.write_text(text + ("Subsystem sftp internal-sftp\n" if self.sftp else ""))
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]

    def start(self) -> None:
        wrapper = self.workdir / "wrapper.sh"
        wrapper.write_text(_WRAPPER)
        no_sftp = self.workdir / "no-sftp-server"
        no_sftp.write_text("#!/bin/sh\necho 'no sftp-server here' >&2\nexit 127\n")
        no_sftp.chmod(0o755)
        # dropbear runs a program for sftp: replace it; sshd is configured instead.
        replacement = str(no_sftp) if self.kind == "dropbear" and not self.sftp else "-"
        args = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--"]
        args += ["/bin/sh", str(wrapper), str(self.workdir / "home"), str(self.workdir / "shadow")]
        args += [replacement, str(SFTP_SERVER), *self._server_args()]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.settimeout(1)
                if sock.recv(4) == b"SSH-":
                    return
            time.sleep(0.02)
        raise RuntimeError(f"{self.kind} did not start: {self.log.read_text()}")

    def new_host_key(self) -> None:
        """Replace the host key (takes effect at the next start)."""
        self.host_key.unlink()
        make_host_key(self.host_key)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    return free_port()


@pytest.fixture(scope="session")
def root_password() -> str:
    """The root password the test servers accept."""
    return ROOT_PASSWORD


@dataclass
class Keys:
    private: str
    public: str
    other_private: str  # a key the server does not know


@pytest.fixture(scope="session")
def keys() -> Keys:
    private, public = generate_keypair()
    other, _ = generate_keypair()
    return Keys(private, public, other)


@pytest.fixture(scope="session")
def server_factory(keys: Keys) -> Iterator[object]:
    """``make(sftp=True, port=None, kind="dropbear") -> SSHServer`` (started); all are stopped
    at the end. Set RV_KEEP_SSH_TEST_DIRS=1 to keep their folders (and server logs)."""
    reason = _missing_requirements()
    if reason:
        pytest.skip(reason)
    for program in ("dropbear", "dropbearkey", "unshare", "openssl"):
        _require(program)
    servers: list[SSHServer] = []
    base = Path(tempfile.mkdtemp(prefix="rv-ssh-test-"))

    def make(*, sftp: bool = True, port: int | None = None, kind: str = "dropbear") -> SSHServer:
        if kind == "openssh":
            _require("sshd")
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        workdir = Path(tempfile.mkdtemp(dir=base))
        _prepare_home(workdir / "home", keys.public)
        _prepare_shadow(workdir / "shadow")
        server = SSHServer(workdir, port or free_port(), sftp=sftp, kind=kind)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
    if not os.environ.get("RV_KEEP_SSH_TEST_DIRS"):
        shutil.rmtree(base, ignore_errors=True)


def _prepare_home(home: Path, public_key: str) -> None:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True)
    home.chmod(0o700)
    ssh_dir.chmod(0o700)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(public_key + "\n")
    authorized.chmod(0o600)


def _prepare_shadow(path: Path) -> None:
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", ROOT_PASSWORD],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    lines = Path("/etc/shadow").read_text().splitlines()
    fields = [line.split(":") for line in lines]
    for entry in fields:
        if entry[0] == "root":
            entry[1] = hashed
    path.write_text("".join(":".join(entry) + "\n" for entry in fields))
    path.chmod(0o640)


@pytest.fixture(scope="session")
def server(server_factory) -> SSHServer:
    """A shared dropbear server with SFTP (do not stop it in a test)."""
    return server_factory()


@pytest.fixture(scope="session")
def server_without_sftp(server_factory) -> SSHServer:
    return server_factory(sftp=False)


@pytest.fixture(scope="session")
def openssh(server_factory) -> SSHServer:
    """A shared OpenSSH server with SFTP (internal-sftp)."""
    return server_factory(kind="openssh")


@pytest.fixture(scope="session")
def openssh_without_sftp(server_factory) -> SSHServer:
    """OpenSSH without a Subsystem line: it refuses SFTP."""
    return server_factory(kind="openssh", sftp=False)


@pytest.fixture
def target(server: SSHServer, keys: Keys) -> SSHTarget:
    return SSHTarget(port=server.port, username="root", private_key=keys.private)


@pytest.fixture
def session(target: SSHTarget) -> Iterator[SSHSession]:
    with wait_for_ssh(target, timeout=10) as opened:
        yield opened


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch folder on this machine, visible to commands run over SSH."""
    path = Path(tempfile.mkdtemp(prefix="rv-ssh-work-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class HostFwdProxy:
    """A loopback TCP forwarder that behaves like QEMU's user-mode hostfwd: the listening port
    stays open; when the backend (the "guest") is down, connections are accepted and closed."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=2)
            except OSError:
                client.close()  # guest down: accept, then close, as slirp does
                continue
            self._sockets += [client, backend]
            for src, dst in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def hostfwd() -> Iterator[object]:
    """``make(backend_port) -> HostFwdProxy``; every proxy is closed afterwards."""
    proxies: list[HostFwdProxy] = []

    def make(backend_port: int) -> HostFwdProxy:
        proxies.append(HostFwdProxy(backend_port))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
