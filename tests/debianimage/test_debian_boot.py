"""The real Debian 12 test image (tools/debianimage), inspected and booted for real.

Booted through LibvirtHypervisor under TCG with 1 vCPU, the way a build boots it: a disk
overlay on the image, the seed the engine would make (the project's seed builder, with the
network config netconfig renders for a static address on a managed subnet) on the seed drive
the engine uses, and SSH through the loopback management forward. Inside, it must behave like
Debian's genericcloud image: cloud-init done, `debian` with the seed's key and passwordless
sudo, root refused, a machine-id and SSH host keys made at this boot, the guest agent
answering, the static address up, the disk grown, a login on the serial console.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from ruddervirt.engine import netconfig
from ruddervirt.engine.topology import plan
from ruddervirt.guest import ssh
from ruddervirt.hypervisor import disks
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor
from ruddervirt.hypervisor.seed import (
    cloud_config_with_keys,
    make_nocloud_seed,
    nocloud_meta_data,
    seed_drive,
)
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec, MgmtForward, NicSpec
from ruddervirt.manifest import parse
from ruddervirt.proc import CommandFailed, run
from tests.hypervisor.conftest import LIBVIRT_URI
from tools.debianimage import build

pytestmark = [pytest.mark.e2e, pytest.mark.debian]

GIB = 1024**3
SSH_DEADLINE_S = 420
MAC_MGMT = "52:54:00:de:b1:1e"
MANIFEST = """\
network:
  vpcs: [{{name: lab, internet: false}}]
  subnets: [{{name: lan, vpc: lab, cidr: {cidr}}}]
vms:
  - name: deb
    source: {{url: "file:///debian12.qcow2"}}
    cloudInit: {{}}
    nics: [{{name: eth0, subnet: lan, slot: 1, ip: {ip}}}]
"""


def sh(*args: str) -> str:
    return run(list(args), timeout=300).stdout.decode()


def wait_for_login(
    target: ssh.SSHTarget, hv: LibvirtHypervisor, name: str, serial_log: Path
) -> ssh.SSHSession:
    """The engine's own SSH wait; the domain state and console tail when it gives up."""
    try:
        return ssh.wait_for_ssh(target, timeout=SSH_DEADLINE_S)
    except ssh.SSHWaitTimeout as exc:
        console = serial_log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{exc}; domain {hv.state(name)}; console:\n{console}") from exc


def guest(session: ssh.SSHSession, command: str, timeout: float = 60) -> str:
    """Run `command`; its stdout, after asserting that it exited 0."""
    done = session.run_capture(command, timeout=timeout)
    output = done.stdout.decode(errors="replace")
    detail = output + done.stderr.decode(errors="replace")
    assert done.exit_status == 0, f"{command} exited {done.exit_status}: {detail}"
    return output.strip()


def agent_ping(name: str, deadline_s: float = 90) -> dict:
    """guest-ping through libvirt's agent socket, retried while qemu-ga starts."""
    command = ["virsh", "-c", LIBVIRT_URI, "qemu-agent-command", name, '{"execute":"guest-ping"}']
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return json.loads(run([*command, "--timeout", "10"], timeout=30).stdout)
        except CommandFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def raw_copy(image: Path, dest: Path) -> Path:
    raw = dest / "disk.raw"
    sh("qemu-img", "convert", "-O", "raw", str(image), str(raw))
    return raw


def debugfs(raw: Path, request: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["debugfs", "-R", request, str(raw)], capture_output=True, text=True, timeout=120
    )


def test_the_image_has_no_identity_of_its_own_and_records_its_packages(
    debian_image: Path, tmp_path: Path
) -> None:
    info = json.loads((debian_image.parent / build.INFO_NAME).read_text())
    assert debian_image.parent.name == f"debian12-{info['key']}"
    assert info["key"] == build.load_recipe().key()
    listing = (debian_image.parent / build.PACKAGES_NAME).read_text()
    for package in ("cloud-init", "openssh-server", "qemu-guest-agent", "ifupdown", "sudo"):
        assert re.search(
            rf"^ii  {package}\s+{re.escape(info['packages'][package])}\s", listing, re.M
        )
    assert "usrmerge" not in info["packages"] and "perl" not in info["packages"]
    again = time.monotonic()
    assert build.build_image() == debian_image
    assert time.monotonic() - again < 5  # reused, not rebuilt

    raw = raw_copy(debian_image, tmp_path)
    assert "Size: 0" in debugfs(raw, "stat /etc/machine-id").stdout
    assert "ssh_host" not in debugfs(raw, "ls /etc/ssh").stdout
    assert "File not found" in debugfs(raw, "stat /var/lib/cloud/instance").stderr
    assert "File not found" in debugfs(raw, "stat /etc/resolv.conf").stderr
    config = debugfs(raw, "cat /boot/extlinux/extlinux.conf").stdout
    assert "console=tty0 console=ttyS0,115200" in config


def test_debian_guest_boots_to_ssh_as_debian_with_fresh_identity_agent_and_network(
    hv: LibvirtHypervisor, run_prefix: str, qemu_dir: Path, free_port: int, debian_image: Path
) -> None:
    lan = ipaddress.IPv4Network(f"10.253.{random.randrange(256)}.0/24")
    address, gateway = lan[10], lan[1]
    manifest = parse(MANIFEST.format(cidr=lan, ip=address))
    topo = plan(manifest, owner="deb", prefix=run_prefix, allow_internet=False)
    for net in topo.networks:
        hv.define_network(net)
        hv.start_network(net.name)

    private_key, public_line = ssh.generate_keypair("rv-test")
    disk, seed = qemu_dir / "deb.qcow2", qemu_dir / "seed.iso"
    disks.create_overlay(debian_image, disk, "qcow2", size=3 * GIB)
    network_config = netconfig.render(
        topo.nics["deb"], manifest, mgmt_mac=MAC_MGMT, user_network=None
    )
    make_nocloud_seed(
        seed,
        user_data=cloud_config_with_keys(
            None, [public_line], "deb", name_servers=netconfig.name_servers(network_config)
        ),
        meta_data=nocloud_meta_data(instance_id=f"{run_prefix}deb", hostname="deb"),
        network_config=network_config,
    )
    name, serial_log = f"{run_prefix}deb", qemu_dir / "serial.log"
    [nic] = topo.nics["deb"]
    hv.define(
        DomainSpec(
            name=name,
            vcpus=1,
            memory_bytes=GIB,
            domain_type="qemu",
            disks=[DiskSpec(path=disk, target_bus="virtio"), seed_drive(seed)],
            nics=[NicSpec(mac=nic.mac, network=nic.network, model="virtio", pci_slot=nic.slot)],
            mgmt=MgmtForward(host_port=free_port, mac=MAC_MGMT),
            serial_log=serial_log,
            metadata={"kind": "build", "build_id": "debian-boot-test"},
        )
    )
    started = time.monotonic()
    hv.start(name)
    as_debian = ssh.SSHTarget(port=free_port, username="debian", private_key=private_key)
    with wait_for_login(as_debian, hv, name, serial_log) as session:
        print(f"\nboot to SSH login as debian: {time.monotonic() - started:.1f} s")
        check_inside(
            session, address=f"{address}/{lan.prefixlen}", gateway=str(gateway), mac=nic.mac
        )
        print(f"cloud-init done: {time.monotonic() - started:.1f} s")
        assert agent_ping(name) == {"return": {}}
        assert guest(session, "systemctl is-active qemu-guest-agent") == "active"
    assert_root_is_refused(dataclasses.replace(as_debian, username="root"))
    assert re.search(r"\ndeb login:", serial_log.read_text(errors="replace"))  # getty on ttyS0

    hv.shutdown(name)  # ACPI: systemd-logind powers off on the power key
    assert hv.wait_for_state(name, {DomainState.SHUTOFF}, timeout=180) is DomainState.SHUTOFF
    hv.undefine(name)
    for net in topo.networks:
        hv.destroy_network(net.name)
        hv.undefine_network(net.name)
    assert hv.list_domains(run_prefix) == [] and hv.list_networks(run_prefix) == []


def check_inside(session: ssh.SSHSession, *, address: str, gateway: str, mac: str) -> None:
    """What a genericcloud guest shows once cloud-init has run with our seed."""
    status = guest(session, "sudo -n timeout 300 cloud-init status --wait --long", timeout=320)
    assert "status: done" in status, status
    assert guest(session, "hostname") == "deb"
    assert guest(session, "sudo -n id -u") == "0"
    boot_time = int(guest(session, "awk '/^btime/ {print $2}' /proc/stat"))
    assert re.fullmatch(r"[0-9a-f]{32}", guest(session, "cat /etc/machine-id"))
    for made_at_boot in ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub"):
        assert int(guest(session, f"stat -c %Y {made_at_boot}")) >= boot_time, made_at_boot
    interface = guest(session, f"ip -o link | awk -F': ' '/link.ether {mac}/ {{print $2}}'")
    assert address in guest(session, f"ip -o -4 addr show dev {interface}")
    assert address.split("/")[0] in guest(session, "cat /etc/network/interfaces.d/50-cloud-init")
    guest(session, f"ping -c 1 -W 5 {gateway}")
    # ifupdown without resolvconf applies no dns-nameservers: the seed's bootcmd writes them.
    assert f"nameserver {gateway}" in guest(session, "cat /etc/resolv.conf").splitlines()
    assert int(guest(session, "df -B1 --output=size / | tail -1")) > 2.5 * GIB  # resizefs


def assert_root_is_refused(as_root: ssh.SSHTarget) -> None:
    """cloud-init's disable_root: root's key logs in only to be told where to log in instead."""
    with ssh.wait_for_ssh(as_root, timeout=60) as session:
        done = session.run_capture("id -u", timeout=30)
    assert done.exit_status != 0
    assert b'Please login as the user "debian"' in done.stdout
