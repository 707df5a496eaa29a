"""End-to-end: the tiny test image really boots under libvirt (TCG) and behaves like a cloud
image: NoCloud seed, SSH with keys and passwords, SFTP, sudo, NIC models, static network-config,
consoles, ACPI shutdown, reboot and poweroff.

One guest serves the whole module (a boot costs ~10 s under TCG). The tests that change its
power state come last and each starts the guest first when it is not running.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko
import pytest

from tests.testimage.guestvm import (
    ExtraNic,
    KeyPair,
    Seed,
    SerialConsole,
    TinyVM,
    cached_image,
    image_info,
    run,
    tiny_vm,
    virsh,
)
from tools.testimage.build import is_installed

pytestmark = pytest.mark.e2e

HOSTNAME = "tinytest"
ROOT_PASSWORD = "rudder"
STATIC_MAC = "52:54:00:00:01:01"
# NIC model -> (QEMU device, slot, user-mode network). The first gets a static address from
# network-config; the others use DHCP from their own restricted user-mode network.
DATA_NICS = {
    "e1000": ExtraNic("e1000", 0x10, "10.1.0.0/24", STATIC_MAC),
    "e1000e": ExtraNic("e1000e", 0x11, "10.2.0.0/24", "52:54:00:00:02:02"),
    "rtl8139": ExtraNic("rtl8139", 0x12, "10.3.0.0/24", "52:54:00:00:03:03"),
}


@dataclass
class Guest:
    vm: TinyVM
    root_key: KeyPair
    user_key: KeyPair
    nic_models: list[str]
    boot_seconds: float = 0.0

    def ssh(self) -> paramiko.SSHClient:
        return self.vm.connect(self.root_key.private)

    def ensure_running(self) -> None:
        if self.vm.state() != "running":
            self.vm.start()
            self.vm.wait_for_ssh(self.root_key.private).close()


def make_seed(root_key: KeyPair, user_key: KeyPair) -> Seed:
    user_data = {
        "ssh_authorized_keys": [root_key.public],
        "users": [
            "default",
            {"name": "tester", "shell": "/bin/bash", "ssh_authorized_keys": [user_key.public]},
        ],
        "write_files": [
            {"path": "/etc/motd", "content": "Welcome\nto tiny\n", "permissions": "0640"},
            {"path": "/opt/data/b64.txt", "encoding": "b64", "content": "aGVsbG8="},
        ],
        "runcmd": ["echo runcmd-ran > /tmp/runcmd.out", ["touch", "/tmp/with space"]],
    }
    network = {
        "version": 2,
        "ethernets": {
            "data": {
                "match": {"macaddress": STATIC_MAC},
                "set-name": "data0",
                "addresses": ["10.1.0.5/24"],
                "gateway4": "10.1.0.2",
                "nameservers": {"addresses": ["10.1.0.3"]},
            }
        },
    }
    meta = {"instance-id": "iid-testimage-1", "local-hostname": HOSTNAME}
    return Seed(meta, user_data, network)


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    image = cached_image()
    models = image_info(image)["nic_models"]
    root_key, user_key = KeyPair.generate("root@test"), KeyPair.generate("tester@test")
    nics = [nic for model, nic in DATA_NICS.items() if model in models]
    with tiny_vm(make_seed(root_key, user_key), extra_nics=nics) as vm:
        vm.start()
        vm.wait_for_ssh(root_key.private).close()
        yield Guest(vm, root_key, user_key, models, time.monotonic() - vm.started_at)


def test_boots_to_ssh_login_with_the_seed_key(guest: Guest, capsys: pytest.CaptureFixture) -> None:
    with guest.ssh() as client:
        status, out, _ = run(client, "hostname; id; cat /etc/os-release 2>/dev/null; echo ok")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == HOSTNAME
    assert lines[1].startswith("uid=0(root) gid=0(root)")
    assert "ID=ruddervirt-tiny" in lines
    assert lines[-1] == "ok"
    with capsys.disabled():
        print(f"\n[testimage] boot to SSH login: {guest.boot_seconds:.1f} s")
    assert guest.boot_seconds < 120


def test_sftp_upload_reads_back(guest: Guest) -> None:
    payload = "".join(f"line {i}\n" for i in range(2000))
    with guest.ssh() as client, client.open_sftp() as sftp:
        with sftp.open("/tmp/upload.txt", "w") as remote:
            remote.write(payload)
        with sftp.open("/tmp/upload.txt") as remote:
            assert remote.read().decode() == payload
        _, out, _ = run(client, "sha256sum /tmp/upload.txt")
    assert out.split()[0] == hashlib.sha256(payload.encode()).hexdigest()


def test_root_password_login_works_and_a_wrong_one_is_refused(guest: Guest) -> None:
    with guest.vm.connect(password=ROOT_PASSWORD) as client:
        assert run(client, "id -un")[1].strip() == "root"
    with pytest.raises(paramiko.AuthenticationException):
        guest.vm.connect(password="not-the-password").close()


def test_seed_user_logs_in_with_its_key_and_sudo_makes_it_root(guest: Guest) -> None:
    with guest.vm.connect(guest.user_key.private, username="tester") as client:
        assert run(client, "id -un; echo $HOME")[1].split() == ["tester", "/home/tester"]
        assert run(client, "sudo id -u")[1].strip() == "0"
        status, out, _ = run(client, "sudo -S sh -c 'id -u; cat'", stdin="pw\nafter\n")
        assert (status, out) == (0, "0\nafter\n")
        assert run(client, "echo pw | sudo -S -E -H -n -u root -- sh -c 'id -un'")[1] == "root\n"
        assert run(client, "sudo -u nobody id -u")[1].strip() == "65534"
        assert run(client, "sudo -k -x id")[0] != 0  # unknown options are refused
    # Every key of the seed is installed for root as well.
    with guest.ssh() as client:
        keys = run(client, "cat /root/.ssh/authorized_keys")[1]
    assert guest.root_key.public in keys and guest.user_key.public in keys


def test_write_files_and_runcmd_were_applied(guest: Guest) -> None:
    with guest.ssh() as client:
        assert run(client, "cat /etc/motd; stat -c %a /etc/motd")[1] == "Welcome\nto tiny\n640\n"
        assert run(client, "cat /opt/data/b64.txt")[1] == "hello"
        deadline = time.monotonic() + 30  # runcmd runs in the background after rcS
        while run(client, "cat /tmp/runcmd.out 2>/dev/null")[1] != "runcmd-ran\n":
            assert time.monotonic() < deadline, run(client, "cat /var/log/seed.log")[1]
            time.sleep(1)
        assert run(client, "test -e '/tmp/with space' && echo yes")[1] == "yes\n"
        log = run(client, "cat /var/log/seed.log")[1]
    assert "seed found on /dev/sr0" in log
    assert "hostname set to tinytest" in log
    assert "created user tester" in log


def test_static_address_from_network_config_and_dhcp_on_every_other_nic(guest: Guest) -> None:
    if "e1000" not in guest.nic_models:
        pytest.skip(f"this image's kernel drives only {guest.nic_models}")
    with guest.ssh() as client:
        addr = run(client, "ip -4 addr show dev data0")[1]
        assert "inet 10.1.0.5/24" in addr
        assert "default via 10.1.0.2 dev data0" in run(client, "ip route")[1]
        assert run(client, "cat /etc/resolv.conf")[1].count("nameserver 10.1.0.3") == 1
        assert run(client, "ping -c 1 -W 5 10.1.0.2")[0] == 0
        # Names follow PCI slots: 0x11 (e1000e) is eth1, 0x12 (rtl8139) eth2, 0x1e (mgmt) eth3.
        expected = {"eth1": "10.2.0.15/24", "eth2": "10.3.0.15/24", "eth3": "10.0.2.15/24"}
        deadline = time.monotonic() + 60  # DHCP runs in the background; e1000e links up late
        for iface, address in expected.items():
            while f"inet {address}" not in run(client, f"ip -4 addr show dev {iface}")[1]:
                assert time.monotonic() < deadline, run(client, "ip addr; cat /var/log/net.log")[1]
                time.sleep(1)
        script = "for i in eth1 eth2 eth3 data0; do readlink /sys/class/net/$i/device/driver; done"
        drivers = [path.rsplit("/", 1)[-1] for path in run(client, script)[1].split()]
    assert drivers == ["e1000e", "8139cp", "virtio_net", "e1000"]


def test_image_has_the_promised_tools_and_free_space(guest: Guest) -> None:
    with guest.ssh() as client:
        status, out, _ = run(
            client,
            "for t in sha256sum md5sum dd mount sync udhcpc acpid getty login sudo "
            "dropbear /usr/lib/sftp-server; do command -v $t >/dev/null || echo missing $t; done;"
            " command -v bash && echo has-bash; df -k / | tail -1",
        )
    assert status == 0
    assert "missing" not in out and "has-bash" not in out
    free_kib = int(out.split()[-3])
    assert free_kib >= 30 * 1024


def test_login_prompts_on_serial_console_and_tty1(guest: Guest) -> None:
    console = SerialConsole(guest.vm.serial_port)
    try:
        console.send("\r\n")
        console.expect("login: ")
        console.send("root\r\n")
        console.expect("Password: ")
        console.send(f"{ROOT_PASSWORD}\r\n")
        console.expect("# ")
        console.send("echo serial-$((6 * 7)); exit\r\n")
        console.expect("serial-42")
    finally:
        console.close()
    # tty1 (what VNC shows): log in on its keyboard and leave a trace to find over SSH.
    guest.vm.type_keys(f"root\n{ROOT_PASSWORD}\ntouch /tmp/from-tty1\nexit\n")
    with guest.ssh() as client:
        deadline = time.monotonic() + 30
        while run(client, "ls /tmp/from-tty1")[0] != 0:
            assert time.monotonic() < deadline, "no login on tty1"
            time.sleep(1)


def test_acpi_power_button_powers_off(guest: Guest) -> None:
    guest.ensure_running()
    virsh("shutdown", guest.vm.name)
    guest.vm.wait_state("shut off", timeout=30)


def test_boot_again_then_reboot_over_ssh_brings_ssh_back(guest: Guest) -> None:
    guest.ensure_running()
    with guest.ssh() as client:
        boot_id = run(client, "cat /proc/sys/kernel/random/boot_id")[1]
        client.exec_command("reboot")
    deadline = time.monotonic() + 60
    while guest.vm.banner_ready():  # until init has stopped dropbear
        assert time.monotonic() < deadline, "SSH still up 60 s after reboot"
        time.sleep(0.5)
    with guest.vm.wait_for_ssh(guest.root_key.private) as client:
        assert run(client, "cat /proc/sys/kernel/random/boot_id")[1] != boot_id
        log = run(client, "cat /var/log/seed.log; dmesg")[1]
    # Later boots keep the instance (no second user-data run) and find a clean file system.
    assert log.count("new instance iid-testimage-1") == 1
    assert "already set up" in log
    assert "unchecked" not in log


def test_poweroff_over_ssh_powers_off(guest: Guest) -> None:
    guest.ensure_running()
    with guest.ssh() as client:
        client.exec_command("poweroff")
    guest.vm.wait_state("shut off", timeout=60)


def test_cloud_kernel_image_boots_without_a_seed(capsys: pytest.CaptureFixture) -> None:
    """The cloud kernel (virtio, SCSI and IDE only; what "auto" falls back to) boots faster.
    Without a seed (a clone, say) the guest keeps its defaults: hostname tiny, root/rudder."""
    if not is_installed("linux-image-cloud-amd64"):
        pytest.skip("linux-image-cloud-amd64 is not installed")
    with tiny_vm(None, image=cached_image("cloud")) as vm:
        vm.start()
        deadline = time.monotonic() + 180
        while not vm.banner_ready():
            assert time.monotonic() < deadline, vm.console_tail()
            time.sleep(0.25)
        with vm.connect(password=ROOT_PASSWORD) as client:
            seconds = time.monotonic() - vm.started_at
            out = run(client, "hostname; cat /var/log/seed.log")[1]
    assert out.splitlines()[0] == "tiny"
    assert "no NoCloud seed (label cidata) found" in out
    with capsys.disabled():
        print(f"\n[testimage] cloud kernel, no seed: boot to SSH login: {seconds:.1f} s")
