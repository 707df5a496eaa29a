"""Will a class fit on this host? Memory and disk, estimated before anything is created.

Memory: every VM of the version (its memory plus a per-VM allowance for QEMU itself),
times the number of clones, against the host's MemAvailable minus a reserve, minus what
clones already being made will take (they are not in MemAvailable yet).

Disk: a linked clone starts at a few hundred KiB but grows as the guest writes, so each of
its disks is counted at a per-disk allowance; a full copy is counted at the template disk's
size on disk plus that allowance. Against the free space of the storage root minus a reserve.

Settings (bytes): RUDDERVIRT_HOST_MEMORY_RESERVE, RUDDERVIRT_CLONE_MEMORY_OVERHEAD,
RUDDERVIRT_HOST_DISK_RESERVE, RUDDERVIRT_CLONE_DISK_ALLOWANCE.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from builds.models import ModuleVersion
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


def per_clone(version: ModuleVersion, *, full_copy: bool) -> tuple[int, int]:
    """(memory, disk) bytes one clone of `version` is counted at."""
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


def committed_memory() -> int:
    """Memory of clones that are being made or started: not in MemAvailable yet."""
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
    return total


def _memory_of(version: ModuleVersion, overhead: int) -> int:
    """The memory one clone of `version` takes; none when its record cannot be read (its
    clones fail, and take no memory)."""
    try:
        return sum(vm.memory + overhead for vm in version.version_spec.vms)
    except SpecError:
        return 0


def estimate(version: ModuleVersion, clones: int, *, full_copy: bool = False) -> Estimate:
    """The memory and disk `clones` new clones of `version` need, against the host."""
    memory_one, disk_one = per_clone(version, full_copy=full_copy)
    memory_free = mem_available() - setting("RUDDERVIRT_HOST_MEMORY_RESERVE") - committed_memory()
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    disk_free = shutil.disk_usage(root).free - setting("RUDDERVIRT_HOST_DISK_RESERVE")
    memory_free, disk_free = max(memory_free, 0), max(disk_free, 0)
    problems = []
    if memory_one * clones > memory_free:
        problems.append(
            f"not enough memory: {clones} clone(s) of {version} need "
            f"{human(memory_one * clones)} ({human(memory_one)} each), but the host has "
            f"{human(memory_free)} available after its reserve and the clones being made"
        )
    if disk_one * clones > disk_free:
        kind = "full copies" if full_copy else "linked clones"
        problems.append(
            f"not enough disk: {clones} {kind} of {version} need {human(disk_one * clones)} "
            f"({human(disk_one)} each), but {root} has {human(disk_free)} free after its reserve"
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
