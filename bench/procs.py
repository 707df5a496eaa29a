"""The processes the console benchmark runs against, and reading their memory.

Every helper is a context manager that stops what it started (terminate, then kill after a
timeout), binds loopback only, and gives up after a bounded wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for(predicate, what: str, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def fake_servers(count: int, folder: Path) -> Iterator[list[int]]:
    """`count` fake RFB servers in one process of their own; yields their ports."""
    port_file, log = folder / "fake-ports.json", folder / "fake-rfb.log"
    command = [sys.executable, "-m", "bench.fake_rfb", "--count", str(count)]
    process = _spawn([*command, "--port-file", str(port_file)], log)
    try:
        _wait_for(port_file.exists, "the fake RFB servers", process, log)
        yield json.loads(port_file.read_text())
    finally:
        _stop(process)


@dataclass
class Portal:
    port: int
    pid: int


@contextlib.contextmanager
def portal(folder: Path) -> Iterator[Portal]:
    """daphne serving ruddervirt.asgi with the benchmark's settings and database."""
    from django.conf import settings

    log = folder / "daphne.log"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.console_settings",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        PYTHONPATH=str(ROOT),
    )
    command = [sys.executable, "-m", "daphne", "-e", "tcp:port=0:interface=127.0.0.1"]
    process = _spawn([*command, "ruddervirt.asgi:application"], log, env)
    listening = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")

    def port() -> int | None:
        found = listening.search(log.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    try:
        yield Portal(port=_wait_for(port, "daphne", process, log), pid=process.pid)
    finally:
        _stop(process)


@dataclass
class Websockify:
    port: int
    pid: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def websockify(folder: Path, ports: list[int]) -> Iterator[Websockify]:
    """A standalone websockify (its default: a process per connection); token `p<port>`
    leads to 127.0.0.1:<port>."""
    tokens, log = folder / "websockify-tokens", folder / "websockify.log"
    tokens.write_text("".join(f"p{p}: 127.0.0.1:{p}\n" for p in ports))
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "websockify"),
        "--token-plugin", "TokenFile", "--token-source", str(tokens), f"127.0.0.1:{port}",
    ]  # fmt: skip
    process = _spawn(command, log)
    try:
        _wait_for(lambda: _listening(port), "websockify", process, log)
        yield Websockify(port=port, pid=process.pid)
    finally:
        _stop(process)


@contextlib.contextmanager
def qemu_domains(count: int) -> Iterator[list[int]]:
    """`count` diskless QEMU domains (SeaBIOS on screen); yields their VNC ports."""
    from django.conf import settings

    from ruddervirt.hypervisor.specs import DomainSpec
    from ruddervirt.runtime import get_hypervisor

    hv = get_hypervisor()
    names = [f"{settings.RUDDERVIRT_NAME_PREFIX}vnc{i}" for i in range(count)]
    try:
        for name in names:
            hv.define(
                DomainSpec(
                    name=name,
                    vcpus=1,
                    memory_bytes=32 * 1024 * 1024,
                    domain_type=settings.RUDDERVIRT_DOMAIN_TYPE,
                    metadata={"kind": "bench"},
                )
            )
            hv.start(name)
        time.sleep(3)  # SeaBIOS draws its screen
        yield [hv.console_address(name).port for name in names]
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                hv.destroy(name)
            with contextlib.suppress(Exception):
                hv.undefine(name)


# --- memory ------------------------------------------------------------------------------
def pss_kib(pid: int) -> int:
    """Proportional set size: private memory plus a fair share of what the process shares
    (forked children share their parent's pages: PSS adds up to the real total, RSS and
    USS do not)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in task.read_text().split()]
    return found


def tree_pss_kib(pid: int) -> int:
    """PSS of a process and all its descendants: the memory the whole proxy uses."""
    return pss_kib(pid) + sum(tree_pss_kib(child) for child in children(pid))
