"""A real Debian 12 guest built, generalized at capture and cloned twice under TCG: each clone
boots as a new cloud-init instance with its own machine-id and SSH host keys, keeps the
module's static address, and is not provisioned again. Each clone VM is recorded ready when
its qemu-guest-agent answers; the agent freezes a guest's filesystems and shuts a clone
down.

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
from tests.helpers import make_user
from tests.specs import template_disks

__all__ = ["debian_image"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(1800),  # a Debian build and two clones under TCG
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


def test_debian_clones_boot_with_their_own_identity_and_the_modules_address(
    image_server, debian_image, storage, tmp_path
):
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
    for name in ("ann", "ben"):
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
    seen = []
    for clone in clones:
        vm = clone.vms.get(name="web")
        target = ssh.SSHTarget(port=vm.mgmt_port, username="debian", private_key=private_key)
        with ssh.wait_for_ssh(target, timeout=600) as session:
            seen.append(identity(session))
    print(f"2 Debian clones up with their own identity in {time.monotonic() - started:.1f}s")

    first, second = seen
    for one in seen:
        assert len(one["machine_id"]) == 32 and one["machine_id"] != one["build_machine_id"]
        assert one["host_key"] != one["build_host_key"]
        assert one["hostname"] == "web"
        assert one["userdata_runs"] == "ran"  # the build's userData did not run again
        assert one["build_keys"] == "0"
    assert first["build_machine_id"] == second["build_machine_id"]  # the same template
    assert first["machine_id"] != second["machine_id"]
    assert first["host_key"] != second["host_key"]
    assert first["instance"] != second["instance"]

    # Before a forced stop, the agent flushes and freezes the guest's filesystems.
    second = clones[1].vms.get(name="web").domain_name
    assert (hv.fsfreeze(second, 30) or 0) >= 1
    hv.destroy(second)

    # The agent shuts a clone down cleanly, whatever ACPI would do.
    domain = clones[0].vms.get(name="web").domain_name
    assert hv.shutdown(domain) is ShutdownVia.AGENT
    assert hv.wait_for_state(domain, [DomainState.SHUTOFF], 180) is DomainState.SHUTOFF

    done, refused = services.request_for_class(klass, "delete", user=owner, queue=False)
    assert len(done) == 2 and not refused
    run_inline([c.pk for c in done], "delete")
    assert not Clone.objects.exists()
