"""LibvirtHypervisor against the real qemu:///system (TCG domains, no guest OS needed).

Every object is named with this run's prefix and removed by the ``hv`` fixture's finalizer
even when a test fails; the tests also check that their own cleanup leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import threading
from pathlib import Path

import pytest

from ruddervirt.hypervisor import disks
from ruddervirt.hypervisor.driver import (
    DomainNotFound,
    DomainState,
    InvalidState,
    NetworkNotFound,
    ShutdownVia,
)
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor
from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import (
    DiskSpec,
    DomainSpec,
    EfiSpec,
    MgmtForward,
    NetworkSpec,
    NicSpec,
)

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
KEY_ENTER, KEY_LEFTSHIFT, KEY_A = 28, 42, 30
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def rfb_banner(family: int, address: object) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        return sock.recv(12)


def qemu_cmdline(domain_name: str) -> list[str]:
    """The argv of the QEMU process running ``domain_name`` (read from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == f"guest={domain_name},debug-threads=on".encode() for arg in argv):
            return [arg.decode() for arg in argv]
    raise AssertionError(f"no QEMU process for {domain_name}")


def isolated_network(name: str) -> NetworkSpec:
    third, second = random.randrange(256), random.randrange(200, 250)
    return NetworkSpec(
        name=name,
        bridge=bridge_name_for(name),
        ipv4=f"10.{second}.{third}.1/24",
        dhcp_range=(f"10.{second}.{third}.100", f"10.{second}.{third}.150"),
        metadata={"kind": "test"},
    )


def blank_domain(name: str, qemu_dir: Path, **overrides: object) -> DomainSpec:
    disk = qemu_dir / f"{name}.qcow2"
    disks.create_blank(disk, 32 * MIB)
    values: dict[str, object] = {
        "name": name,
        "vcpus": 1,
        "memory_bytes": 128 * MIB,
        "domain_type": "qemu",
        "disks": [DiskSpec(path=disk, target_bus="virtio")],
        "serial_log": qemu_dir / f"{name}.serial.log",
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_domain_with_network_runs_and_cleans_up_completely(
    hv: LibvirtHypervisor, run_prefix: str, qemu_dir: Path, free_port: int
) -> None:
    net = isolated_network(f"{run_prefix}lan")
    hv.define_network(net)
    hv.start_network(net.name)
    hv.start_network(net.name)  # already active: no-op
    assert hv.network_exists(net.name)
    [net_info] = hv.list_networks(run_prefix)
    assert (net_info.name, net_info.active, net_info.bridge) == (net.name, True, net.bridge)
    assert net_info.metadata == {"kind": "test"}

    name = f"{run_prefix}web"
    tags = {"kind": "build", "build_id": "42"}
    nic = NicSpec(mac="52:54:00:5e:00:01", network=net.name, pci_slot=1)
    spec = blank_domain(
        name, qemu_dir, nics=[nic], mgmt=MgmtForward(host_port=free_port), metadata=tags
    )
    hv.define(spec)
    hv.define(spec)  # shut off: redefining is allowed
    assert hv.state(name) is DomainState.SHUTOFF
    hv.start(name)
    assert hv.wait_for_state(name, {DomainState.RUNNING}, timeout=30) is DomainState.RUNNING
    hv.start(name)  # already running: no-op
    with pytest.raises(InvalidState):
        hv.define(spec)
    with pytest.raises(InvalidState):
        hv.undefine(name)

    console = hv.console_address(name)
    assert console.host == "127.0.0.1"
    assert console.port is not None and console.port >= 5900
    assert rfb_banner(socket.AF_INET, ("127.0.0.1", console.port)) == b"RFB 003.008\n"

    argv = qemu_cmdline(name)
    assert f"user,id=rvmgmt,restrict=on,hostfwd=tcp:127.0.0.1:{free_port}-:22" in argv
    with socket.create_connection(("127.0.0.1", free_port), timeout=10):
        pass  # QEMU listens for the SSH forward on loopback

    hv.send_keys(name, [KEY_ENTER])
    hv.send_keys(name, [KEY_LEFTSHIFT, KEY_A], hold_ms=50)
    picture = hv.screenshot(name)
    assert picture.startswith((b"\x89PNG", b"P6"))
    assert len(picture) > 100

    [info] = hv.list_domains(run_prefix)
    assert (info.name, info.state, dict(info.metadata)) == (name, DomainState.RUNNING, tags)
    assert Path(spec.serial_log).exists()  # type: ignore[arg-type]

    assert hv.agent_ping(name, 1) is False  # a channel, but no agent in it: no error
    assert hv.fsfreeze(name, 1) is None  # nothing to freeze with: no error
    assert hv.shutdown(name) is ShutdownVia.ACPI  # no OS to honour ACPI: still running
    assert hv.state(name) is DomainState.RUNNING
    hv.destroy(name)
    assert hv.agent_ping(name, 1) is False  # not running: no error
    assert hv.state(name) is DomainState.SHUTOFF
    hv.destroy(name)  # already off: no error
    hv.undefine(name)
    hv.undefine(name)  # absent: no error
    assert hv.state(name) is DomainState.ABSENT
    hv.destroy_network(net.name)
    hv.destroy_network(net.name)  # inactive: no error
    hv.undefine_network(net.name)
    hv.undefine_network(net.name)  # absent: no error

    assert hv.list_domains(run_prefix) == []
    assert hv.list_networks(run_prefix) == []
    assert not hv.network_exists(net.name)
    assert not Path("/sys/class/net", net.bridge).exists()


def test_vnc_on_a_unix_socket(hv: LibvirtHypervisor, run_prefix: str, qemu_dir: Path) -> None:
    # QEMU runs as libvirt-qemu and creates the socket itself: its folder must be writable.
    sockets = qemu_dir / "vnc"
    sockets.mkdir()
    shutil.chown(sockets, "libvirt-qemu", "libvirt-qemu")
    name = f"{run_prefix}sock"
    hv.define(blank_domain(name, qemu_dir, vnc=sockets / "console.sock"))
    hv.start(name)
    console = hv.console_address(name)
    assert console.socket == sockets / "console.sock"
    assert console.host is None and console.port is None
    assert rfb_banner(socket.AF_UNIX, str(console.socket)) == b"RFB 003.008\n"
    hv.destroy(name)
    hv.undefine(name)
    assert hv.state(name) is DomainState.ABSENT


@pytest.mark.skipif(not OVMF_CODE.exists(), reason="OVMF (package ovmf) is not installed")
def test_uefi_q35_domain_runs_and_undefine_removes_its_nvram(
    hv: LibvirtHypervisor, run_prefix: str, qemu_dir: Path
) -> None:
    name = f"{run_prefix}efi"
    nvram = qemu_dir / f"{name}_VARS.fd"
    efi = EfiSpec(loader=OVMF_CODE, nvram=nvram, nvram_template=OVMF_VARS)
    # A SATA CD-ROM too: on q35 it must go to the built-in AHCI at 00:1f.2.
    cdrom = DiskSpec(path=qemu_dir / "empty.iso", target_bus="sata", device="cdrom", format="raw")
    (qemu_dir / "empty.iso").write_bytes(b"\0" * 2048 * 16)
    spec = blank_domain(name, qemu_dir, efi=efi, machine="q35")
    hv.define(dataclasses.replace(spec, disks=(*spec.disks, cdrom)))
    hv.start(name)
    assert hv.wait_for_state(name, {DomainState.RUNNING}, timeout=30) is DomainState.RUNNING
    assert nvram.exists()
    hv.destroy(name)
    hv.undefine(name)
    assert not nvram.exists()


def test_missing_objects_raise_typed_errors(hv: LibvirtHypervisor, run_prefix: str) -> None:
    ghost = f"{run_prefix}ghost"
    assert hv.state(ghost) is DomainState.ABSENT
    for call in (hv.start, hv.shutdown, hv.destroy, hv.console_address, hv.screenshot):
        with pytest.raises(DomainNotFound):
            call(ghost)
    hv.undefine(ghost)
    with pytest.raises(NetworkNotFound):
        hv.start_network(ghost)
    hv.undefine_network(ghost)
    assert not hv.network_exists(ghost)


def test_objects_outside_the_prefix_are_never_touched(hv: LibvirtHypervisor) -> None:
    with pytest.raises(ValueError, match="prefix"):
        hv.destroy_network("default")
    with pytest.raises(ValueError, match="prefix"):
        hv.undefine("some-admins-vm")


def test_each_thread_gets_its_own_connection(hv: LibvirtHypervisor, run_prefix: str) -> None:
    seen: list[object] = []

    def work() -> None:
        hv.list_domains(run_prefix)
        seen.append(hv._conn())

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 3 and len({id(conn) for conn in seen}) == 3


def test_a_forked_child_opens_its_own_connection(hv: LibvirtHypervisor, run_prefix: str) -> None:
    # rq work horses are forked from a worker that may already hold a connection.
    parent_conn = hv._conn()
    pid = os.fork()
    if pid == 0:  # the child: must not reuse (and so disturb) the parent's connection
        code = 1
        try:
            if hv._conn() is not parent_conn and hv.list_domains(run_prefix) == []:
                code = 0
            hv.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert hv._conn() is parent_conn
    assert hv.list_domains(run_prefix) == []
