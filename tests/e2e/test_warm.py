"""Warm clones under TCG: the tiny version booted once and saved (its warm image), then
clones resumed from it: ready sooner than a cold boot, the same addresses, isolated from
each other, reprovisioned the same way, and a restore that fails boots cold instead.

The tiny module is built once for this file (test_clones' fixture); the tiny guest has no
guest agent, so its warm clones are restored as they were saved (the page says so).
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.roles import STUDENTS
from clones import readiness, services, warm
from clones.models import Class, ClassMembership, Clone, CloneStatus, WarmImage, WarmStatus
from clones.runner import execute, run_inline
from ruddervirt.engine.identity import NO_AGENT
from tests.e2e import test_clones
from tests.e2e.test_clones import (
    MARKER,
    WAIT_ADDRESS,
    guest,
    login,
    on_host,
    qemu_img_info,
    restore,
    template_disk,
)
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

built = test_clones.built  # the tiny module, built once for this file
UPTIME = "cut -d' ' -f1 /proc/uptime"


def ready_times(clones: list[Clone], hv) -> dict[int, float]:
    """Probe until every VM of `clones` is ready; seconds from its start, by clone id."""
    left = readiness.wait_ready([c.pk for c in clones], hv, timeout=300)
    assert not left, f"not ready: {[vm.domain_name for vm in left]}"
    return {c.pk: c.vms.get().ready_s for c in Clone.objects.filter(pk__in=[c.pk for c in clones])}


def running_for(vm) -> float:
    """Seconds since the portal started (or restored) the VM."""
    return (timezone.now() - vm.started_at).total_seconds()


def test_warm_clones_resume_the_saved_guest_with_the_cold_addresses_and_stay_apart(
    built, hv, storage
):
    owner = make_user("teacher", superuser=True)
    version = restore(built, owner)
    students = {n: make_user(n, STUDENTS) for n in ("ann", "ben", "cy")}
    klass = Class.objects.create(name="Monday", owner=owner)
    for student in students.values():
        ClassMembership.objects.create(klass=klass, student=student)

    # The warm image: booted once, ready, saved; only frozen files are left.
    image = warm.run_here(warm.request(version, by=owner, queue=False))
    assert image.status == WarmStatus.READY, image.error
    folder = warm.folder_of(image)
    state = folder / "web" / "state.sav"
    frozen = folder / "web" / "disk0-root.qcow2"
    for path in (state, frozen):
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert image.size_bytes >= state.stat().st_size > 16 * 1024 * 1024
    assert qemu_img_info(str(frozen))["backing-filename"] == template_disk(built)
    assert on_host(hv, image.key) == []
    print(f"\nwarm image made in {image.made_in_s:.1f}s, {image.size_bytes / 2**20:.0f} MiB")

    # One cold clone (ann) and two warm ones (ben, cy).
    cold = services.launch(klass, version, by=owner, students=[students["ann"]], start="cold",
                           queue=False)  # fmt: skip
    run_inline([c.pk for c in cold], "provision")
    cold_ready = ready_times(cold, hv)
    warm_clones = services.launch(klass, version, by=owner, queue=False)  # warm: the default
    assert {c.start_mode for c in warm_clones} == {"warm"}
    run_inline([c.pk for c in warm_clones], "provision")
    warm_ready = ready_times(warm_clones, hv)
    print(f"time to ready: cold {list(cold_ready.values())}, warm {list(warm_ready.values())}")
    assert max(warm_ready.values()) < min(cold_ready.values())

    ann = Clone.objects.get(student=students["ann"])
    ben, cy = (Clone.objects.get(student=students[n]) for n in ("ben", "cy"))
    for clone in (ben, cy):
        assert clone.status == CloneStatus.RUNNING, clone.error
        vm = clone.vms.get()
        assert (vm.started_via, vm.start_note) == ("warm", NO_AGENT)
        assert clone.warm_image_id == image.pk
        chain = qemu_img_info(vm.disks[0])
        assert chain["backing-filename"] == str(frozen)
    assert ann.vms.get().started_via == "cold" and ann.warm_image_id is None

    # Same MAC and address as the cold clone; the uptime goes on from the saved guest.
    cold_vm = ann.vms.get()
    with login(cold_vm.mgmt_port) as session:
        cold_mac = guest(session, "cat /sys/class/net/eth0/address")
        guest(session, WAIT_ADDRESS, timeout=150)
        cold_uptime = float(guest(session, UPTIME))
        assert cold_uptime < running_for(cold_vm) + 1
    for clone, other in ((ben, cy), (cy, ben)):
        vm = clone.vms.get()
        with login(vm.mgmt_port) as session:
            assert guest(session, "cat /root/marker") == MARKER
            assert guest(session, "cat /sys/class/net/eth0/address") == cold_mac
            guest(session, WAIT_ADDRESS, timeout=150)  # its own private gateway answers
            # A restored guest had been up a while when it was saved; a booted one has not.
            assert float(guest(session, UPTIME)) > running_for(vm) + 3
            # Isolation: what one warm clone writes (disk, memory) the other never sees.
            guest(session, f"echo {clone.key} > /root/mine; echo {clone.key} > /dev/shm/mine; sync")
            seen = guest(session, f"cat /root/mine /dev/shm/mine; ls /root/{other.key} || true")
            assert seen.split()[:2] == [clone.key, clone.key]

    # Reprovision of a warm clone: resumed again from the image, the student's work gone.
    services.request_action(ben, "reprovision", user=owner, queue=False)
    assert execute(ben.pk, "reprovision").status == CloneStatus.RUNNING
    again = Clone.objects.get(pk=ben.pk).vms.get()
    assert again.started_via == "warm"
    with login(again.mgmt_port) as session:
        assert guest(session, "cat /root/mine 2>/dev/null || echo gone") == "gone"
        assert guest(session, "cat /sys/class/net/eth0/address") == cold_mac

    # The image cannot be dropped under its clones; once they are gone it can.
    with pytest.raises(warm.WarmNotAllowed, match="stand on this warm image"):
        warm.drop(WarmImage.objects.get(pk=image.pk), by=owner)
    done, _ = services.request_for_class(klass, "delete", user=owner, queue=False)
    run_inline([c.pk for c in done], "delete")
    warm.drop(WarmImage.objects.get(pk=image.pk), by=owner)
    assert not folder.exists() and not WarmImage.objects.exists()
    assert Path(template_disk(built)).exists()


def test_a_warm_clone_whose_restore_fails_boots_cold_and_says_why(built, hv, storage):
    owner = make_user("teacher", superuser=True)
    version = restore(built, owner)
    image = warm.run_here(warm.request(version, by=owner, queue=False))
    assert image.status == WarmStatus.READY, image.error
    state = warm.folder_of(image) / "web" / "state.sav"
    state.chmod(0o644)
    with state.open("r+b") as f:  # a damaged save image: libvirt refuses it
        f.write(b"NotLibvirtSave!!")
    began = time.monotonic()
    done = services.launch(
        Class.objects.create(name="Tuesday", owner=owner), version, by=owner,
        students=[make_user("dee", STUDENTS)], start="warm", queue=False,
    )  # fmt: skip
    run_inline([c.pk for c in done], "provision")
    clone = Clone.objects.get(pk=done[0].pk)
    assert clone.status == CloneStatus.RUNNING, clone.error
    vm = clone.vms.get()
    assert vm.started_via == "cold"
    assert vm.start_note.startswith("booted cold: the warm restore failed"), vm.start_note
    assert "not a complete libvirt save image" in vm.start_note
    assert clone.warm_image_id is None
    assert qemu_img_info(vm.disks[0])["backing-filename"] == template_disk(built)
    with login(vm.mgmt_port) as session:
        assert guest(session, "cat /root/marker") == MARKER
    print(f"\nfallback clone running in {time.monotonic() - began:.1f}s: {vm.start_note}")
    run_inline([c.pk for c in services.request_for_class(clone.klass, "delete", user=owner,
                                                         queue=False)[0]], "delete")  # fmt: skip


def test_launch_class_start_warm_makes_the_image_first_then_a_class_ready_in_seconds(
    built, hv, storage
):
    owner = make_user("root-admin", superuser=True)
    restore(built, owner)
    done = test_clones.manage(
        "launch_class", "--module", "tiny@1", "--students", "ann,ben", "--start", "warm",
        "--wait-ready", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    image = data["warm_image"]
    assert image["status"] == "Ready" and image["made_now_s"] > 0
    ready = [vm["ready_s"] for c in data["clones"] for vm in c["vms"]]
    assert {vm["started_via"] for c in data["clones"] for vm in c["vms"]} == {"warm"}
    print(f"\nCLI: warm image made in {image['made_now_s']}s; launch {data['launch_s']}s; "
          f"ready {ready}")  # fmt: skip
    assert all(s is not None and s < 10 for s in ready), ready
    shown = test_clones.manage("warm_image", "show", "tiny@1", "--json")
    assert json.loads(shown.stdout)["clones"] == 2
    for entry in data["clones"]:
        test_clones.manage("clone_action", str(entry["id"]), "delete")
    dropped = test_clones.manage("warm_image", "drop", "tiny@1")
    assert dropped.returncode == 0, dropped.stderr
    assert not (Path(storage) / "warm" / str(image["id"])).exists()
