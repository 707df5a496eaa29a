"""Fixtures for the hypervisor tests: spec factories, and for e2e a real libvirt driver whose
name prefix is unique to this test run, a storage folder QEMU can reach, and finalizers that
remove every domain, network and file the test made, even when it fails."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ruddervirt.hypervisor.driver import (
    DomainNotFound,
    Hypervisor,
    HypervisorError,
    NetworkNotFound,
)
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor

LIBVIRT_URI = os.environ.get("RUDDERVIRT_LIBVIRT_URI", "qemu:///system")
BASE_PREFIX = os.environ.get("RUDDERVIRT_NAME_PREFIX", "rv-")


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """``<prefix>test-<random>-``: every e2e object of this run, and nothing else, has it."""
    return f"{BASE_PREFIX}test-{secrets.token_hex(3)}-"


@pytest.fixture
def qemu_dir() -> Iterator[Path]:
    """A fresh folder for disks/seeds that the libvirt-qemu user can traverse (pytest's
    tmp_path lives under a mode-700 folder, which QEMU cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix="rv-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hv(run_prefix: str) -> Iterator[LibvirtHypervisor]:
    """A LibvirtHypervisor limited to this run's prefix; cleans up everything it can see."""
    driver = LibvirtHypervisor(LIBVIRT_URI, name_prefix=run_prefix)
    try:
        driver.list_domains(run_prefix)
    except HypervisorError as exc:
        pytest.fail(
            f"libvirt at {LIBVIRT_URI} is unreachable ({exc}); "
            "start it with: pgrep libvirtd || (virtlogd -d && libvirtd -d)"
        )
    yield driver
    remove_everything(driver, run_prefix)
    driver.close()


def remove_everything(driver: Hypervisor, prefix: str) -> None:
    """Destroy and undefine every domain and network whose name starts with ``prefix``."""
    for info in driver.list_domains(prefix):
        with contextlib.suppress(DomainNotFound):
            driver.destroy(info.name)
            driver.undefine(info.name)
    for net in driver.list_networks(prefix):
        with contextlib.suppress(NetworkNotFound):
            driver.destroy_network(net.name)
            driver.undefine_network(net.name)
