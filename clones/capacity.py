"""Will a class fit on this host? Memory and disk, before any clone is created.

Memory: every VM of a clone (its memory plus a per-VM allowance for QEMU itself) against
the host's room (ruddervirt.capacity: MemAvailable minus a reserve, minus what is promised
but not in MemAvailable yet: clones being made, and every VM of every build that is queued
or running).

Disk: a linked clone starts at a few hundred KiB but grows as the guest writes. Each of
its disks has a budget of RUDDERVIRT_CLONE_DISK_ALLOWANCE; a full copy's budget is the
template disk's size on disk plus that allowance. A new clone needs its whole budget; an
existing clone (not failed or being deleted) still holds the part of its budget it has
not written yet (budget minus what its folder allocates now, at least 0), because what it
did write is already gone from the free space. Builds promise theirs (builds.admission).
All against the storage root's free space minus a reserve. A clone that writes beyond its
allowance is not stopped (that needs quotas); the reserve is what absorbs it.

What clones hold is promised here (`promised_by_clones`, registered with
ruddervirt.capacity by ClonesConfig.ready). Settings: those of ruddervirt.capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from builds.models import ModuleVersion
from clones.models import Clone, CloneStatus, WarmStatus
from ruddervirt import capacity
from ruddervirt.capacity import human, setting
from ruddervirt.engine.clone import disk_usage
from ruddervirt.spec import SpecError, disk_files


@dataclass(frozen=True)
class Estimate:
    clones: int
    memory_per_clone: int
    memory_needed: int
    memory_available: int
    disk_per_clone: int
    disk_needed: int
    disk_available: int
    problems: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        return (
            f"{self.clones} clone(s): memory {human(self.memory_needed)} of "
            f"{human(self.memory_available)} available, disk {human(self.disk_needed)} of "
            f"{human(self.disk_available)} free"
        )

    def as_json(self) -> dict:
        return {
            "clones": self.clones,
            "memory_needed": self.memory_needed,
            "memory_available": self.memory_available,
            "disk_needed": self.disk_needed,
            "disk_available": self.disk_available,
            "fits": self.fits,
            "problems": list(self.problems),
        }


# --- what one clone is counted at -------------------------------------------------------
def per_clone(version: ModuleVersion, *, full_copy: bool) -> tuple[int, int]:
    """(memory, disk budget) bytes one clone of `version` is counted at."""
    overhead = setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    allowance = setting("RUDDERVIRT_CLONE_DISK_ALLOWANCE")
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    memory = disk = 0
    for vm in version.version_spec.vms:
        memory += vm.memory + overhead
        for record, path in zip(vm.disks, disk_files(vm, root), strict=True):
            disk += allowance
            if full_copy:
                disk += path.stat().st_blocks * 512 if path.exists() else record.size
    return memory, disk


# --- what is promised already ------------------------------------------------------------
def promised_by_clones() -> capacity.Promised:
    """Memory of clones being made or started (not, or not all, in MemAvailable yet), and
    the disk existing clones may still write: each one's budget minus what its folder
    allocates now (never below 0)."""
    return capacity.Promised(memory=_memory_waiting(), disk=_disk_held())


def _memory_waiting() -> int:
    waiting = Clone.objects.filter(
        status__in=[CloneStatus.PENDING, CloneStatus.PROVISIONING, CloneStatus.STARTING]
    ).select_related("version")
    overhead = setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    per_version: dict[int, int] = {}
    total = 0
    for clone in waiting:
        if clone.version_id not in per_version:
            per_version[clone.version_id] = _memory_of(clone.version, overhead)
        total += per_version[clone.version_id]
    for version in ModuleVersion.objects.filter(warm_image__status=WarmStatus.MAKING):
        total += _memory_of(version, overhead)  # the instance a warm image is made of
    return total


def _memory_of(version: ModuleVersion, overhead: int) -> int:
    """The memory one clone of `version` takes; none when its record cannot be read (its
    clones fail, and take no memory)."""
    try:
        return sum(vm.memory + overhead for vm in version.version_spec.vms)
    except SpecError:
        return 0


def _disk_held() -> int:
    total = 0
    clones = Clone.objects.exclude(status__in=[CloneStatus.FAILED, CloneStatus.DELETING])
    for clone in clones.select_related("version"):
        try:
            budget = per_clone(clone.version, full_copy=clone.full_copy)[1]
        except SpecError:  # an unreadable record: its clones fail, and hold nothing
            continue
        folder = Path(clone.storage_path) if clone.storage_path else None
        used = disk_usage(folder) if folder is not None and folder.exists() else 0
        total += max(0, budget - used)
    return total


# --- the checks --------------------------------------------------------------------------
def estimate(
    version: ModuleVersion, clones: int, *, full_copy: bool = False, extra_disk: int = 0
) -> Estimate:
    """The memory and disk `clones` new clones of `version` need, against the host (plus
    `extra_disk` bytes per clone: a warm image's saved states). Warm and cold clones count
    the same: a restored clone has all of its memory to itself, as a booted one."""
    memory_one, disk_one = per_clone(version, full_copy=full_copy)
    disk_one += extra_disk
    memory_free, disk_free, root = capacity.free_now()
    problems = []
    if memory_one * clones > memory_free:
        problems.append(
            f"not enough memory: {clones} clone(s) of {version} need "
            f"{human(memory_one * clones)} ({human(memory_one)} each), but the host has "
            f"{human(memory_free)} available after its reserve, the clones being made and "
            "the builds queued or running"
        )
    if disk_one * clones > disk_free:
        kind = "full copies" if full_copy else "linked clones"
        problems.append(
            f"not enough disk: {clones} {kind} of {version} need {human(disk_one * clones)} "
            f"({human(disk_one)} each), but {root} has {human(disk_free)} free after its "
            "reserve and what existing clones and builds may still write"
        )
    return Estimate(
        clones=clones,
        memory_per_clone=memory_one,
        memory_needed=memory_one * clones,
        memory_available=memory_free,
        disk_per_clone=disk_one,
        disk_needed=disk_one * clones,
        disk_available=disk_free,
        problems=tuple(problems),
    )
