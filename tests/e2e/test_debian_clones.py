"""A real Debian 12 guest built, generalized at capture and cloned for a class of three under
TCG (issue 14, item 7d): each clone boots as a new cloud-init instance with its own machine-id
and SSH host keys, keeps the module's static address, and is not provisioned again; the
clones cannot reach each other. Each clone VM is recorded ready when its qemu-guest-agent
answers, and the class dashboard says so; the agent freezes a guest's filesystems and shuts
a clone down.

The build records its own machine-id, host key and user-data runs in files that
generalization leaves alone; each clone is then checked from inside, over SSH as `debian`
with the instructor's key (the build's own key is gone from the template).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import indent

import pytest

from accounts.roles import STUDENTS
from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import readiness, services
from clones.models import Class, ClassMembership, Clone, CloneStatus, CloneVM
from clones.runner import run_inline
from ruddervirt.guest import ssh
from ruddervirt.hypervisor.driver import DomainState, ShutdownVia
from ruddervirt.runtime import get_hypervisor
from ruddervirt.spec import load_spec
from tests.debianimage.conftest import debian_image
from tests.helpers import client_for, make_user
from tests.specs import template_disks

__all__ = ["debian_image"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(2400),  # a Debian build and three clones under TCG
]

IMAGE = "debian12-20261206.qcow2"
REMEMBER = (
    "sudo sh -c 'cat /etc/machine-id > /var/lib/build-machine-id; "
    "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub > /var/lib/build-host-key'"
)
WAIT_ADDRESS = (
    "i=0; until ip -4 -o addr show | grep -q 'inet 10.10.0.10/24'; do "
    "i=$((i+1)); [ $i -gt 240 ] && exit 1; sleep 0.5; done; ping -c 1 -W 3 10.10.0.1 >/dev/null"
)


def manifest(image_server, private_key: str) -> str:
    return f"""\
timeout: 25m
files:
  - name: key
    inline: |
{indent(private_key.strip(), " " * 6)}
network:
  vpcs: [{{name: lab}}]
  subnets: [{{name: lan, vpc: lab, cidr: 10.10.0.0/24}}]
vms:
  - name: web
    source:
      url: {image_server.url(IMAGE)}
      checksum: sha256:{image_server.sha256(IMAGE)}
    resources: {{cpu: 1, memory: 1Gi}}
    disks: [{{name: root, size: 3Gi}}]
    communicator: {{sshUsername: debian, sshPrivateKeyFile: key, sshTimeout: 10m}}
    cloudInit:
      userData: |
        #cloud-config
        runcmd: [[sh, -c, "echo ran >> /var/lib/userdata-runs"]]
    nics: [{{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}}]
    provisioners:
      - name: remember the build's identity
        type: shell
        shell: {{inline: "{REMEMBER}"}}
"""


def guest(session: ssh.SSHSession, command: str, timeout: float = 60) -> str:
    done = session.run_capture(command, timeout=timeout)
    out = done.stdout.decode(errors="replace").strip()
    assert done.exit_status == 0, f"{command}: {out} {done.stderr.decode(errors='replace')}"
    return out


def identity(session: ssh.SSHSession) -> dict[str, str]:
    """What one clone shows from inside, once cloud-init is done."""
    status = guest(session, "sudo -n timeout 300 cloud-init status --wait", timeout=320)
    assert "done" in status, status
    guest(session, WAIT_ADDRESS, timeout=150)
    return {
        "machine_id": guest(session, "cat /etc/machine-id"),
        "host_key": guest(session, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
        "instance": guest(session, "cat /var/lib/cloud/data/instance-id"),
        "hostname": guest(session, "hostname"),
        "build_machine_id": guest(session, "cat /var/lib/build-machine-id"),
        "build_host_key": guest(session, "cat /var/lib/build-host-key"),
        "userdata_runs": guest(session, "cat /var/lib/userdata-runs"),
        "build_keys": guest(session, "grep -c ruddervirt-build ~/.ssh/authorized_keys || true"),
    }


def debugfs_of(disk: Path, tmp: Path) -> Callable[[str], str]:
    """debugfs requests against a raw copy of `disk` (a whole-disk ext4, as the image is)."""
    raw = tmp / "template.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(disk), str(raw)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip

    def ask(request: str) -> str:
        done = subprocess.run(
            ["debugfs", "-R", request, str(raw)], capture_output=True, text=True, timeout=120
        )
        return done.stdout + done.stderr

    return ask


def check_template(disk: Path, tmp: Path, instructor_key: str) -> None:
    """What generalization left in the captured disk itself (`instructor_key`: the base64
    part of the instructor's public key, which stays)."""
    ask = debugfs_of(disk, tmp)
    assert "Size: 0" in ask("stat /etc/machine-id")
    assert "ssh_host" not in ask("ls /etc/ssh") and "sshd_config" in ask("ls /etc/ssh")
    assert "File not found" in ask("stat /var/lib/cloud/instance")
    assert "File not found" in ask("stat /etc/network/interfaces.d/50-cloud-init")
    keys = ask("cat /home/debian/.ssh/authorized_keys")
    assert "ruddervirt-build" not in keys
    assert instructor_key in keys
    assert "Size: 33" in ask("stat /var/lib/build-machine-id")  # the build's own, kept


def probe_address(index: int) -> str:
    """A second address clone `index` takes on the module's subnet for the isolation check."""
    return f"10.10.0.{101 + index}"


NIC_OF_MODULE_ADDRESS = "ip -o -4 addr show | awk '$4 == \"10.10.0.10/24\" {print $2}'"


def take_probe_address(session: ssh.SSHSession, index: int) -> None:
    """Clone `index` takes a second address of its own on the module's subnet."""
    nic = guest(session, NIC_OF_MODULE_ADDRESS)
    guest(session, f"sudo -n ip addr add {probe_address(index)}/24 dev {nic}")


def isolation(session: ssh.SSHSession, index: int, count: int) -> dict[str, str]:
    """From inside clone `index`, once every clone took its probe address: its own gateway
    answers; the other clones' probe addresses do not (one shared segment would answer)."""
    guest(session, "ping -c 1 -W 3 10.10.0.1 >/dev/null")
    seen = {}
    for other in range(count):
        if other != index:
            done = session.run_capture(f"ping -c 2 -W 2 {probe_address(other)}", timeout=30)
            seen[probe_address(other)] = "answers" if done.exit_status == 0 else "silent"
    return seen


def dashboard(klass, owner) -> tuple[list[str], str]:
    """The class dashboard as its instructor sees it: each VM's readiness from its JSON
    feed, as "clone N student VM: ready in S (via)", and the page's HTML."""
    browser = client_for(owner)
    page = browser.get(f"/clones/classes/{klass.pk}/")
    assert page.status_code == 200
    summary = browser.get(f"/clones/classes/{klass.pk}/status.json").json()
    rows = [
        f"clone {c['id']} {c['student']} {vm['name']}: {vm['ready_text']}"
        for c in summary["clones"]
        for vm in c["vms"]
    ]
    return rows, page.content.decode()


def test_debian_clones_boot_with_their_own_identity_and_the_modules_address(
    image_server, debian_image, storage, tmp_path
):
    if not (image_server.folder / IMAGE).exists():  # the server is shared
        (image_server.folder / IMAGE).symlink_to(debian_image)
    private_key, public = ssh.generate_keypair("instructor")
    owner = make_user("teacher", superuser=True)
    started = time.monotonic()
    build = execute_build(
        submit_manifest(
            text=manifest(image_server, private_key), module_name="deb", user=owner, queue=False
        ).pk
    )
    assert build.status == BuildStatus.SUCCEEDED, build.error
    print(f"\nDebian build (generalized) in {time.monotonic() - started:.1f}s")
    version = ModuleVersion.objects.get(build=build)
    web = load_spec(version.spec).vm("web")
    assert web.generalization is not None and web.generalization.host_keys
    removed = web.generalization.removed
    assert "emptied /etc/machine-id" in removed
    assert any(item.startswith("removed /etc/ssh/ssh_host_ed25519_key") for item in removed)
    assert any("cloud-init clean" in item for item in removed)
    assert any("authorized_keys" in item for item in removed), removed
    print("generalization removed:\n  " + "\n  ".join(removed))
    check_template(template_disks(version, "web")[0], tmp_path, public.split()[1])

    klass = Class.objects.create(name="Debian", owner=owner)
    for name in ("ann", "ben", "cy"):
        ClassMembership.objects.create(klass=klass, student=make_user(name, STUDENTS))
    started = time.monotonic()
    made = services.launch(klass, version, by=owner, queue=False)
    run_inline([c.pk for c in made], "provision")
    clones = list(Clone.objects.all())
    assert {c.status for c in clones} == {CloneStatus.RUNNING}, [c.error for c in clones]
    hv = get_hypervisor()
    assert readiness.wait_ready([c.pk for c in clones], hv, timeout=900) == []
    for vm in CloneVM.objects.filter(clone__in=clones):
        print(f"clone {vm.clone_id} VM {vm.name} ready in {vm.ready_s:.1f}s ({vm.ready_via})")
        # Debian's qemu-guest-agent answers: readiness comes from the agent, some time
        # into the boot (a login prompt takes ~55 s under TCG) and within the wait.
        assert vm.ready_via == "agent" and 5 < vm.ready_s < time.monotonic() - started
    rows, page = dashboard(klass, owner)
    print("class dashboard:\n  " + "\n  ".join(rows))
    assert len(rows) == 3 and all(": ready in " in row and "(agent)" in row for row in rows)
    assert page.count("ready in ") == 3
    targets = [
        ssh.SSHTarget(port=vm.mgmt_port, username="debian", private_key=private_key)
        for vm in (clone.vms.get(name="web") for clone in clones)
    ]
    seen = []
    for index, target in enumerate(targets):
        with ssh.wait_for_ssh(target, timeout=600) as session:
            seen.append(identity(session))
            take_probe_address(session, index)
    probes = []
    for index, target in enumerate(targets):
        with ssh.wait_for_ssh(target, timeout=120) as session:
            probes.append(isolation(session, index, len(clones)))
    print(f"3 Debian clones up with their own identity in {time.monotonic() - started:.1f}s")

    for one in seen:
        assert len(one["machine_id"]) == 32 and one["machine_id"] != one["build_machine_id"]
        assert one["host_key"] != one["build_host_key"]
        assert one["hostname"] == "web"
        assert one["userdata_runs"] == "ran"  # the build's userData did not run again
        assert one["build_keys"] == "0"
    assert len({one["build_machine_id"] for one in seen}) == 1  # the same template
    for field in ("machine_id", "host_key", "instance"):
        assert len({one[field] for one in seen}) == 3, field
    # Every clone has the module's address (identity() waited for 10.10.0.10/24) and reaches
    # its own gateway, never another clone.
    print(f"isolation probes: {probes}")
    assert all(set(probe.values()) == {"silent"} and len(probe) == 2 for probe in probes)

    # Before a forced stop, the agent flushes and freezes the guest's filesystems.
    second = clones[1].vms.get(name="web").domain_name
    assert (hv.fsfreeze(second, 30) or 0) >= 1
    hv.destroy(second)

    # The agent shuts a clone down cleanly, whatever ACPI would do.
    domain = clones[0].vms.get(name="web").domain_name
    assert hv.shutdown(domain) is ShutdownVia.AGENT
    assert hv.wait_for_state(domain, [DomainState.SHUTOFF], 180) is DomainState.SHUTOFF

    done, refused = services.request_for_class(klass, "delete", user=owner, queue=False)
    assert len(done) == 3 and not refused
    run_inline([c.pk for c in done], "delete")
    assert not Clone.objects.exists()
