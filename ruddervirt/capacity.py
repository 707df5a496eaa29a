"""The host's room for new work, shared by builds and clones: memory and disk.

Room is what the host has (MemAvailable; the storage root's free space) minus a reserve,
minus what is promised but not taken yet. Each app that promises room registers a
:data:`PromiseSource` at start-up (its AppConfig.ready): builds.admission for queued and
running builds, clones.capacity for clones. This module knows neither app, so both can
ask it whether new work fits (builds.admission for a build, clones.capacity for a class).

Settings (bytes): RUDDERVIRT_HOST_MEMORY_RESERVE, RUDDERVIRT_CLONE_MEMORY_OVERHEAD (per
VM, builds' VMs too), RUDDERVIRT_HOST_DISK_RESERVE, RUDDERVIRT_CLONE_DISK_ALLOWANCE.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from ruddervirt.manifest import Manifest

MIB = 1024**2
GIB = 1024**3
DEFAULTS = {
    "RUDDERVIRT_HOST_MEMORY_RESERVE": 1 * GIB,
    "RUDDERVIRT_CLONE_MEMORY_OVERHEAD": 64 * MIB,
    "RUDDERVIRT_HOST_DISK_RESERVE": 2 * GIB,
    "RUDDERVIRT_CLONE_DISK_ALLOWANCE": 512 * MIB,
}


@dataclass(frozen=True)
class Promised:
    """Bytes promised to work under way and not yet taken from the host's figures."""

    memory: int = 0
    disk: int = 0


PromiseSource = Callable[[], Promised]
_sources: dict[str, PromiseSource] = {}
# The apps whose promises every figure must include (their AppConfig.ready registers them):
# a figure without one would over-commit the host silently, so it is an error instead.
REQUIRED_SOURCES = ("builds", "clones")


class SourceMissing(RuntimeError):
    """A required promise source was never registered (its app is not set up)."""


def register(name: str, source: PromiseSource) -> None:
    """Count `source`'s promises from now on (registering a name again replaces it)."""
    _sources[name] = source


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


def promised() -> Promised:
    """Everything every registered source has promised; SourceMissing when a required one
    never registered."""
    missing = [name for name in REQUIRED_SOURCES if name not in _sources]
    if missing:
        raise SourceMissing(
            f"capacity: no promises registered by {', '.join(missing)} (is the app in "
            "INSTALLED_APPS and Django set up?): the host's room cannot be known"
        )
    found = [source() for source in _sources.values()]
    return Promised(sum(p.memory for p in found), sum(p.disk for p in found))


def committed_memory() -> int:
    """Memory of clones being made or started, and of every queued or running build's VMs:
    not (or not all) in MemAvailable yet."""
    return promised().memory


def committed_disk() -> int:
    """Disk that existing clones and queued or running builds may still write."""
    return promised().disk


def free_now() -> tuple[int, int, Path]:
    """(memory, disk) bytes free for new work after the reserves and every promise, and the
    storage root the disk figure is about."""
    promises = promised()
    memory = mem_available() - setting("RUDDERVIRT_HOST_MEMORY_RESERVE") - promises.memory
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    disk = disk_free(root) - setting("RUDDERVIRT_HOST_DISK_RESERVE") - promises.disk
    return max(memory, 0), max(disk, 0), root


def build_demand(manifest: Manifest) -> tuple[int, int]:
    """(memory, disk) bytes the VMs of a build of `manifest` ask for: their build-time memory
    (buildOverrides applied) and their disks at full size (a build keeps these on its row)."""
    built = manifest.for_build()
    memory = sum(vm.resources.memory for vm in built.vms)
    disk = sum(d.size for vm in built.vms for d in vm.disks)
    return memory, disk


def build_cost(memory: int, disk: int, vms: int) -> tuple[int, int]:
    """(memory, disk) bytes a build is counted at: what it asks for (build_demand) plus the
    per-VM overhead of each of its `vms` QEMU processes."""
    return memory + setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD") * vms, disk


def per_build(manifest: Manifest) -> tuple[int, int]:
    """(memory, disk) bytes a build of `manifest` is counted at (build_cost)."""
    return build_cost(*build_demand(manifest), len(manifest.vms))


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
