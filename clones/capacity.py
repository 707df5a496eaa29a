"""Will a class, or a build, fit on this host? Memory and disk, before anything is created.

Memory: every VM (its memory plus a per-VM allowance for QEMU itself) against the host's
MemAvailable minus a reserve, minus what is promised but not in MemAvailable yet: clones
being made, and every VM of every build that is queued or running (a build VM's memory is
counted in full while the build lasts: QEMU touches it as the guest runs).

Disk: a linked clone starts at a few hundred KiB but grows as the guest writes. Each of
its disks has a budget of RUDDERVIRT_CLONE_DISK_ALLOWANCE; a full copy's budget is the
template disk's size on disk plus that allowance. A new clone needs its whole budget; an
existing clone (not failed or being deleted) still holds the part of its budget it has
not written yet (budget minus what its folder allocates now, at least 0), because what it
did write is already gone from the free space. A build's disks can grow to their full
declared size (and are then flattened), so a build is counted at the sum of its disk
sizes, less what its folder allocates already. All against the storage root's free space
minus a reserve. A clone that writes beyond its allowance is not stopped (that needs
quotas); the reserve is what absorbs it.

Settings (bytes): RUDDERVIRT_HOST_MEMORY_RESERVE, RUDDERVIRT_CLONE_MEMORY_OVERHEAD (per
VM, builds' VMs too), RUDDERVIRT_HOST_DISK_RESERVE, RUDDERVIRT_CLONE_DISK_ALLOWANCE.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db.models import Count

from builds.models import ACTIVE, Build, ModuleVersion, build_plan_fields
from ruddervirt.engine.clone import disk_usage
from ruddervirt.manifest import Manifest
from ruddervirt.spec import SpecError, disk_files

MIB = 1024**2
GIB = 1024**3
DEFAULTS = {
    "RUDDERVIRT_HOST_MEMORY_RESERVE": 1 * GIB,
    "RUDDERVIRT_CLONE_MEMORY_OVERHEAD": 64 * MIB,
    "RUDDERVIRT_HOST_DISK_RESERVE": 2 * GIB,
    "RUDDERVIRT_CLONE_DISK_ALLOWANCE": 512 * MIB,
}


def setting(name: str) -> int:
    return int(getattr(settings, name, DEFAULTS[name]))


def human(n: float) -> str:
    """Bytes for people: 1.5 GiB, 300 MiB."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's estimate of memory available for new work, in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemAvailable in {meminfo}")


def disk_free(root: Path) -> int:
    """Bytes free for new files in the file system holding `root`."""
    return shutil.disk_usage(root).free


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


# --- what one clone or one build is counted at -------------------------------------------
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


def per_build(manifest: Manifest) -> tuple[int, int]:
    """(memory, disk) bytes a build of `manifest` is counted at: its VMs at their build-time
    memory (buildOverrides applied) plus the per-VM overhead, its disks at their full size."""
    plan = build_plan_fields(manifest)
    overhead = setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    return int(plan["memory_bytes"]) + overhead * len(manifest.vms), int(plan["disk_bytes"])


# --- what is promised already ------------------------------------------------------------
def _active_builds() -> list[tuple[Build, int, int]]:
    """Every queued or running build, with the (memory, disk) bytes it is counted at: what
    its manifest asked for when it was submitted (Build.memory_bytes, disk_bytes), plus the
    per-VM overhead."""
    overhead = setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    builds = Build.objects.filter(status__in=ACTIVE).annotate(vm_count=Count("vms"))
    return [(b, b.memory_bytes + overhead * b.vm_count, b.disk_bytes) for b in builds]


def committed_memory() -> int:
    """Memory of clones being made or started, and of every queued or running build's VMs:
    not (or not all) in MemAvailable yet."""
    from clones.models import Clone, CloneStatus

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
    return total + sum(memory for _, memory, _disk in _active_builds())


def _memory_of(version: ModuleVersion, overhead: int) -> int:
    """The memory one clone of `version` takes; none when its record cannot be read (its
    clones fail, and take no memory)."""
    try:
        return sum(vm.memory + overhead for vm in version.version_spec.vms)
    except SpecError:
        return 0


def committed_disk() -> int:
    """Disk that existing clones and queued or running builds may still write: each one's
    budget minus what its folder allocates now (never below 0)."""
    from builds.services import build_workdir
    from clones.models import Clone, CloneStatus

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
    for build, _memory, disk in _active_builds():
        folder = build_workdir(build.pk)
        used = disk_usage(folder) if folder.exists() else 0
        total += max(0, disk - used)
    return total


def free_now() -> tuple[int, int, Path]:
    """(memory, disk) bytes free for new work after the reserves and every promise, and the
    storage root the disk figure is about."""
    memory = mem_available() - setting("RUDDERVIRT_HOST_MEMORY_RESERVE")
    memory -= committed_memory()
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    disk = disk_free(root) - setting("RUDDERVIRT_HOST_DISK_RESERVE")
    disk -= committed_disk()
    return max(memory, 0), max(disk, 0), root


# --- the checks --------------------------------------------------------------------------
def estimate(version: ModuleVersion, clones: int, *, full_copy: bool = False) -> Estimate:
    """The memory and disk `clones` new clones of `version` need, against the host."""
    memory_one, disk_one = per_clone(version, full_copy=full_copy)
    memory_free, disk_free, root = free_now()
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


def build_problems(manifest: Manifest) -> list[str]:
    """Why a build of `manifest` does not fit on the host now (empty when it does): every
    VM of a build runs at once, so the whole build must fit."""
    memory, disk = per_build(manifest)
    memory_free, disk_free, root = free_now()
    problems = []
    if memory > memory_free:
        problems.append(
            f"not enough memory for this build: its {len(manifest.vms)} VM(s) need "
            f"{human(memory)} while building, but the host has {human(memory_free)} "
            "available after its reserve, the clones being made and the other builds "
            f"({human(memory - memory_free)} short)"
        )
    if disk > disk_free:
        problems.append(
            f"not enough disk for this build: its disks can grow to {human(disk)}, but "
            f"{root} has {human(disk_free)} free after its reserve and what clones and "
            f"other builds may still write ({human(disk - disk_free)} short)"
        )
    return problems
