"""A warm launch of three real Debian 12 clones under TCG: the version booted once and
saved (its warm image), then three clones resumed from it. Through the guest agent each gets
the host's clock and an identity of its own: distinct machine-ids and SSH host keys, the
hostname kept, sshd running with the new keys. Checked from inside over SSH."""

from __future__ import annotations

import time

import pytest

from accounts.roles import STUDENTS
from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import readiness, services, warm
from clones.models import Class, ClassMembership, Clone, CloneStatus, CloneVM, WarmStatus
from clones.runner import run_inline
from ruddervirt.guest import ssh
from ruddervirt.runtime import get_hypervisor
from tests.debianimage.conftest import debian_image
from tests.e2e.test_debian_clones import IMAGE, WAIT_ADDRESS, guest, manifest
from tests.helpers import make_user

__all__ = ["debian_image"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(2400),
]


def clock_offset(session: ssh.SSHSession) -> tuple[float, float]:
    """The guest's clock minus the host's, and how uncertain that is (half the round trip),
    in seconds: the sample with the shortest round trip of three (a loaded host can take
    seconds to run one command over SSH)."""
    samples = []
    for _ in range(3):
        before = time.time()
        guest_now = float(guest(session, "date +%s.%N"))
        after = time.time()
        samples.append((after - before, guest_now - (before + after) / 2))
    round_trip, offset = min(samples)
    return offset, round_trip / 2


def test_three_warm_debian_clones_have_the_clock_and_identities_of_their_own(
    image_server, debian_image, storage
):
    if not (image_server.folder / IMAGE).exists():  # the server is shared
        (image_server.folder / IMAGE).symlink_to(debian_image)
    private_key, _public = ssh.generate_keypair("instructor")
    owner = make_user("teacher", superuser=True)
    build = execute_build(
        submit_manifest(
            text=manifest(image_server, private_key), module_name="deb", user=owner, queue=False
        ).pk
    )
    assert build.status == BuildStatus.SUCCEEDED, build.error
    version = ModuleVersion.objects.get(build=build)

    image = warm.run_here(warm.request(version, by=owner, queue=False))
    assert image.status == WarmStatus.READY, image.error
    print(f"\nDebian warm image made in {image.made_in_s:.1f}s, {image.size_bytes / 2**20:.0f} MiB")
    time.sleep(5)  # the saved clock falls behind the host's

    klass = Class.objects.create(name="Debian warm", owner=owner)
    for name in ("ann", "ben", "cy"):
        ClassMembership.objects.create(klass=klass, student=make_user(name, STUDENTS))
    made = services.launch(klass, version, by=owner, queue=False)
    run_inline([c.pk for c in made], "provision")
    clones = list(Clone.objects.all())
    assert {c.status for c in clones} == {CloneStatus.RUNNING}, [c.error for c in clones]
    assert readiness.wait_ready([c.pk for c in clones], get_hypervisor(), timeout=600) == []
    for vm in CloneVM.objects.filter(clone__in=clones):
        print(f"clone {vm.clone_id} VM {vm.name}: {vm.started_via} start, ready in "
              f"{vm.ready_s:.1f}s ({vm.ready_via}) {vm.start_note}")  # fmt: skip
        assert (vm.started_via, vm.start_note) == ("warm", "")

    seen = []
    for clone in clones:
        vm = clone.vms.get(name="web")
        target = ssh.SSHTarget(port=vm.mgmt_port, username="debian", private_key=private_key)
        with ssh.wait_for_ssh(target, timeout=300) as session:
            offset, uncertain = clock_offset(session)
            guest(session, WAIT_ADDRESS, timeout=150)
            seen.append(
                {
                    "offset": offset,
                    "uncertain": uncertain,
                    "machine_id": guest(session, "cat /etc/machine-id"),
                    "host_key": guest(session, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
                    "hostname": guest(session, "hostname"),
                    "sshd": guest(session, "systemctl is-active ssh"),
                    "agent": guest(session, "systemctl is-active qemu-guest-agent"),
                    "keys_made": guest(session, "stat -c %Y /etc/ssh/ssh_host_ed25519_key"),
                    "now": guest(session, "date +%s"),
                }
            )
    print(f"3 warm Debian clones: {seen}")
    for one in seen:
        assert abs(one["offset"]) < 1.0 + one["uncertain"], one  # within a second
        assert len(one["machine_id"]) == 32
        assert (one["hostname"], one["sshd"], one["agent"]) == ("web", "active", "active")
    for field in ("machine_id", "host_key"):
        assert len({one[field] for one in seen}) == 3, field
    done, _ = services.request_for_class(klass, "delete", user=owner, queue=False)
    run_inline([c.pk for c in done], "delete")
