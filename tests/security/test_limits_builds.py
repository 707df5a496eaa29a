"""One instructor cannot take the host: builds are held to its memory and disk at submit
(nothing is created when they do not fit), one person may have only so many builds going,
and clones' disk growth is counted before more is promised."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builds.models import Build, BuildStatus, BuildStep, BuildVM
from builds.services import BuildNotAllowed, start_build
from builds.transitions import transition
from clones.models import Class, ClassMembership
from clones.services import CapacityRefused, launch
from modules.services import create_module
from ruddervirt import capacity
from tests.clones.conftest import make_version
from tests.helpers import make_user
from tests.manifest.cases import SRC

pytestmark = pytest.mark.django_db(transaction=True)
GIB = 1024**3
MIB = 1024**2


def manifest(memory: str = "1Gi", disk: str = "2Gi", vms: int = 1) -> str:
    text = "timeout: 1h\nvms:\n"
    for i in range(vms):
        text += (
            f"  - name: vm{i}\n    source: {SRC}\n    resources: {{memory: {memory}}}\n"
            f"    disks: [{{name: root, size: {disk}}}]\n"
            "    provisioners: [{type: shell, shell: {inline: 'true'}}]\n"
        )
    return text


def module_of(user, text: str, name: str):
    return create_module(name=name, description="", text=text, user=user).module


@pytest.fixture
def host(monkeypatch, settings, tmp_path):
    """A host with 8 GiB available and 100 GiB free disk, whatever this machine has."""
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path / "storage"
    settings.RUDDERVIRT_HOST_MEMORY_RESERVE = 1 * GIB
    settings.RUDDERVIRT_HOST_DISK_RESERVE = 2 * GIB
    state = {"memory": 8 * GIB, "disk": 100 * GIB}
    monkeypatch.setattr(capacity, "mem_available", lambda: state["memory"])
    monkeypatch.setattr(capacity, "disk_free", lambda _root: state["disk"])
    return state


def nothing_created() -> bool:
    return not (Build.objects.exists() or BuildVM.objects.exists() or BuildStep.objects.exists())


# --- concurrency ------------------------------------------------------------------------
def test_a_third_concurrent_build_of_one_instructor_is_refused(instructor, host) -> None:
    module = module_of(instructor, manifest(), "lab")
    start_build(module=module, user=instructor, queue=False)
    start_build(module=module, user=instructor, queue=False)
    with pytest.raises(BuildNotAllowed) as refused:
        start_build(module=module, user=instructor, queue=False)
    message = str(refused.value)
    assert "you have 2 build(s) queued or running" in message
    assert "at most 2 at once (RUDDERVIRT_MAX_CONCURRENT_BUILDS)" in message
    assert Build.objects.count() == 2


def test_another_instructors_builds_do_not_use_up_your_slots(
    instructor, other_instructor, host
) -> None:
    mine = module_of(instructor, manifest(), "mine")
    theirs = module_of(other_instructor, manifest(), "theirs")
    for _ in range(2):
        start_build(module=mine, user=instructor, queue=False)
    assert start_build(module=theirs, user=other_instructor, queue=False).pk


def test_a_finished_build_frees_its_slot(instructor, host) -> None:
    module = module_of(instructor, manifest(), "lab")
    first = start_build(module=module, user=instructor, queue=False)
    start_build(module=module, user=instructor, queue=False)
    transition(first, BuildStatus.CANCELLED, error="cancelled")
    assert start_build(module=module, user=instructor, queue=False).pk


def test_the_concurrency_limit_is_a_setting(instructor, host, settings) -> None:
    settings.RUDDERVIRT_MAX_CONCURRENT_BUILDS = 1
    module = module_of(instructor, manifest(), "lab")
    start_build(module=module, user=instructor, queue=False)
    with pytest.raises(BuildNotAllowed, match="at most 1 at once"):
        start_build(module=module, user=instructor, queue=False)


# --- capacity ---------------------------------------------------------------------------
def test_a_build_that_needs_more_memory_than_the_host_has_is_refused(instructor, host) -> None:
    module = module_of(instructor, manifest(memory="4Gi", vms=2), "big")
    with pytest.raises(BuildNotAllowed) as refused:
        start_build(module=module, user=instructor, queue=False)
    message = str(refused.value)
    assert "not enough memory for this build: its 2 VM(s) need 8.1 GiB" in message
    assert "the host has 7.0 GiB available" in message and "1.1 GiB short" in message
    assert nothing_created()


def test_a_build_whose_disks_can_outgrow_the_free_space_is_refused(instructor, host) -> None:
    module = module_of(instructor, manifest(disk="400Gi"), "wide")
    with pytest.raises(
        BuildNotAllowed, match=r"not enough disk for this build: its disks can grow to 400\.0 GiB"
    ):
        start_build(module=module, user=instructor, queue=False)
    assert nothing_created()


def test_builds_queued_before_count_against_the_next(instructor, other_instructor, host) -> None:
    third = make_user("dora")
    first = module_of(instructor, manifest(memory="3Gi"), "one")
    second = module_of(other_instructor, manifest(memory="3Gi"), "two")
    start_build(module=first, user=instructor, queue=False)
    start_build(module=second, user=other_instructor, queue=False)
    module = module_of(third, manifest(memory="3Gi"), "three")
    with pytest.raises(BuildNotAllowed, match="not enough memory"):
        start_build(module=module, user=third, queue=False)
    assert Build.objects.filter(requested_by=third).count() == 0


def test_build_overrides_count_at_their_build_time_memory(instructor, host) -> None:
    text = (
        manifest(memory="1Gi")
        + "buildOverrides:\n  vms: [{name: vm0, resources: {memory: 16Gi}}]\n"
    )
    module = module_of(instructor, text, "override")
    with pytest.raises(BuildNotAllowed, match=r"need 16\.1 GiB while building"):
        start_build(module=module, user=instructor, queue=False)


def test_an_old_revision_over_todays_caps_is_refused_at_submit(instructor, host, settings) -> None:
    module = module_of(instructor, manifest(memory="4Gi"), "old")
    settings.RUDDERVIRT_MAX_VM_MEMORY = 2 * GIB  # lowered after the text was saved
    with pytest.raises(BuildNotAllowed, match=r"old r1 is not valid on this host: .*at most 2Gi"):
        start_build(module=module, user=instructor, queue=False)
    assert nothing_created()


def test_a_running_build_holds_memory_back_from_a_class_launch(instructor, host) -> None:
    before = capacity.free_now()[0]
    start_build(
        module=module_of(instructor, manifest(memory="2Gi"), "lab"), user=instructor, queue=False
    )
    assert before - capacity.free_now()[0] == 2 * GIB + 64 * MIB


# --- linked clones' disk growth ---------------------------------------------------------
@pytest.fixture
def klass(instructor, student):
    klass = Class.objects.create(name="Networks 101", owner=instructor)
    ClassMembership.objects.create(klass=klass, student=student)
    return klass


@pytest.fixture
def version(instructor, host, settings):
    settings.RUDDERVIRT_CLONE_DISK_ALLOWANCE = 8 * MIB  # two VMs, one disk each: 16 MiB
    return make_version(instructor, Path(settings.RUDDERVIRT_STORAGE_ROOT))


def grow(folder: Path, mib: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "disk0-root.qcow2").open("ab") as handle:
        handle.write(b"\x01" * mib * MIB)  # written, so allocated: not a sparse hole


def test_a_linked_clone_holds_the_part_of_its_allowance_it_has_not_written(
    klass, version, instructor
) -> None:
    (clone,) = launch(klass, version, by=instructor, queue=False)
    clone.refresh_from_db()
    assert capacity.committed_disk() == 16 * MIB
    grow(Path(clone.storage_path), 5)
    assert 10 * MIB <= capacity.committed_disk() <= 11 * MIB
    grow(Path(clone.storage_path), 20)  # past its allowance: the rest is in the free space
    assert capacity.committed_disk() == 0


def test_a_class_is_refused_when_existing_clones_may_still_fill_the_disk(
    klass, version, instructor, student, host, settings
) -> None:
    launch(klass, version, by=instructor, queue=False)
    host["disk"] = 2 * GIB + 20 * MIB  # 20 MiB past the reserve; the first clone holds 16
    other = Class.objects.create(name="Networks 102", owner=instructor)
    ClassMembership.objects.create(klass=other, student=make_user("erin"))
    with pytest.raises(CapacityRefused, match="what existing clones and builds may still write"):
        launch(other, version, by=instructor, queue=False)


def test_the_real_disk_figure_comes_from_the_storage_root(settings, tmp_path) -> None:
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path / "storage"
    _memory, disk, root = capacity.free_now()
    assert root == Path(settings.RUDDERVIRT_STORAGE_ROOT) and root.is_dir()
    assert 0 <= disk <= shutil.disk_usage(root).free
