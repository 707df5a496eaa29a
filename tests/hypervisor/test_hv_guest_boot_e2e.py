"""Boot the tiny test guest (tools/testimage) through LibvirtHypervisor with a NoCloud seed and
log in over SSH through the management forward: the whole hypervisor layer, for real.

Checks what only a running guest can show: the seed's key and hostname arrive, the guest sees
its NICs in manifest slot order (eth0 = manifest slot 1 at PCI 00:11, the management NIC last
at 00:1e), the isolated network's DHCP hands out the fixed address, the serial console is
logged to the file, and an ACPI shutdown powers the guest off.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ruddervirt.hypervisor import disks
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor
from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.seed import cloud_config_with_keys, make_nocloud_seed, nocloud_meta_data
from ruddervirt.hypervisor.specs import (
    DiskSpec,
    DomainSpec,
    MgmtForward,
    NetworkSpec,
    NicSpec,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "tools" / "testimage" / "build.py"
IMAGE_CACHE = Path(os.environ.get("RUDDERVIRT_TESTIMAGE_CACHE", REPO / "var/cache/testimage"))
MIB = 1024 * 1024
SSH_DEADLINE_S = 180
MAC_SLOT_1, MAC_SLOT_2, MAC_MGMT = "52:54:00:5e:01:01", "52:54:00:5e:01:02", "52:54:00:5e:01:1e"


@pytest.fixture(scope="module")
def base_image() -> Path:
    if not BUILDER.exists():
        pytest.skip(f"{BUILDER.relative_to(REPO)} does not exist yet: no bootable test image")
    from tools.testimage.build import build_image

    return build_image(IMAGE_CACHE)


def new_key() -> tuple[paramiko.Ed25519Key, str]:
    """A fresh ed25519 key (paramiko cannot generate one): (paramiko key, OpenSSH public line)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public.decode() + " rv-test"


def ssh_connect(
    port: int, key: paramiko.PKey, hv: LibvirtHypervisor, name: str, serial_log: Path
) -> paramiko.SSHClient:
    """Log in as root on 127.0.0.1:port, retrying while the guest boots."""
    deadline = time.monotonic() + SSH_DEADLINE_S
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=port,
                username="root",
                pkey=key,
                timeout=5,
                banner_timeout=10,
                auth_timeout=10,
                look_for_keys=False,
                allow_agent=False,
            )
            return client
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            state = hv.state(name)
            if time.monotonic() > deadline or state is not DomainState.RUNNING:
                console = serial_log.read_text(errors="replace")[-3000:]
                raise AssertionError(
                    f"no SSH on port {port} ({exc}); domain {state}; serial console:\n{console}"
                ) from exc
            time.sleep(1)


def pci_address(sysfs_path: str) -> str:
    """The PCI function in a resolved /sys/class/net/X/device path (virtio NICs sit below it)."""
    return [part for part in sysfs_path.split("/") if part.startswith("0000:")][-1]


def guest(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    output = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, f"{command}: {stderr.read().decode()}"
    return output.strip()


def test_tiny_guest_boots_with_seed_and_answers_ssh_over_the_management_forward(
    hv: LibvirtHypervisor, run_prefix: str, qemu_dir: Path, free_port: int, base_image: Path
) -> None:
    third = random.randrange(256)
    net = NetworkSpec(
        name=f"{run_prefix}boot-lan",
        bridge=bridge_name_for(f"{run_prefix}boot-lan"),
        ipv4=f"10.251.{third}.1/24",
        dhcp_range=(f"10.251.{third}.100", f"10.251.{third}.150"),
        dhcp_hosts=[(MAC_SLOT_1, f"10.251.{third}.10", "web")],
    )
    hv.define_network(net)
    hv.start_network(net.name)

    key, public_line = new_key()
    disk, seed = qemu_dir / "web.qcow2", qemu_dir / "seed.iso"
    disks.create_overlay(base_image, disk, "qcow2", size=128 * MIB)
    make_nocloud_seed(
        seed,
        user_data=cloud_config_with_keys("#cloud-config\n{}\n", [public_line], "web"),
        meta_data=nocloud_meta_data(instance_id=f"{run_prefix}web", hostname="web"),
    )
    name = f"{run_prefix}web"
    serial_log = qemu_dir / "serial.log"
    spec = DomainSpec(
        name=name,
        vcpus=1,
        memory_bytes=256 * MIB,
        domain_type="qemu",
        disks=[
            DiskSpec(path=disk, target_bus="virtio"),
            DiskSpec(path=seed, target_bus="scsi", device="cdrom", format="raw"),
        ],
        # Declared out of order on purpose: the slots, not the order, decide eth0/eth1.
        nics=[
            NicSpec(mac=MAC_SLOT_2, network=net.name, pci_slot=2),
            NicSpec(mac=MAC_SLOT_1, network=net.name, pci_slot=1),
        ],
        mgmt=MgmtForward(host_port=free_port, mac=MAC_MGMT),
        serial_log=serial_log,
        metadata={"kind": "build", "build_id": "boot-test"},
    )
    hv.define(spec)
    hv.start(name)

    client = ssh_connect(free_port, key, hv, name, serial_log)
    try:
        assert guest(client, "hostname") == "web"
        macs = guest(
            client,
            "cat /sys/class/net/eth0/address /sys/class/net/eth1/address "
            "/sys/class/net/eth2/address",
        ).split()
        assert macs == [MAC_SLOT_1, MAC_SLOT_2, MAC_MGMT]
        links = guest(
            client, "for n in eth0 eth1 eth2; do readlink -f /sys/class/net/$n/device; done"
        )
        assert [pci_address(link) for link in links.split()] == [
            "0000:00:11.0",
            "0000:00:12.0",
            "0000:00:1e.0",
        ]
        # The isolated network's DHCP gives eth0 its fixed address.
        fixed = f"10.251.{third}.10/24"
        poll = f"ip -4 addr show eth0 | grep -qF '{fixed}' && exit; sleep 0.5"
        guest(client, f"for i in $(seq 60); do {poll}; done; exit 1")
    finally:
        client.close()

    assert "rcS: boot finished" in serial_log.read_text(errors="replace")
    hv.shutdown(name)  # the guest's acpid powers off on the ACPI button
    assert hv.wait_for_state(name, {DomainState.SHUTOFF}, timeout=120) is DomainState.SHUTOFF
    hv.undefine(name)
    hv.destroy_network(net.name)
    hv.undefine_network(net.name)
    assert hv.list_domains(run_prefix) == [] and hv.list_networks(run_prefix) == []
