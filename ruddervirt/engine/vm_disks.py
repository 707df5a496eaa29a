"""The disks of a build VM: the source imported as a standalone copy, parents' overlays, blanks.

`VMDisks` is a mixin of engine.vm.VMRunner: the attributes it relies on are declared at the
top of the class (and set by VMRunner.__init__), as InstallerMedia does. Every image file is
made through the build context's `Images` (ctx.images), never by calling qemu-img here; the
parents of a `buildRef` source come from the VM's plan (plan.parent_disks). Everything here
happens before the VM boots. With the step cache (engine.vm_cache) the disks are layers in
the cache's store, and a reused checkpoint's disks are overlays on its layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext, VMPlan
from ruddervirt.engine.reporter import Stopper
from ruddervirt.engine.sources import fetch_image
from ruddervirt.hypervisor.specs import DiskBus
from ruddervirt.manifest.model import Disk, Vm


@dataclass
class PreparedDisk:
    name: str
    path: Path
    bus: DiskBus
    size: int


class VMDisks:
    """Disk preparation of a build VM."""

    # What the mixin relies on; VMRunner.__init__ sets every one of them.
    ctx: BuildContext
    plan: VMPlan
    vm: Vm
    config: EngineConfig
    dir: Path
    stopper: Stopper

    def log(self, text: str, stream: str = "info") -> None:
        raise NotImplementedError  # VMRunner.log

    def remaining(self) -> float:
        raise NotImplementedError  # VMRunner.remaining: seconds left before the build's deadline

    def cache_disk_path(self, index: int, name: str) -> Path | None:
        raise NotImplementedError  # VMCache: the disk's layer in the step cache, or None

    def reuse_base(self, index: int) -> Path | None:
        raise NotImplementedError  # VMCache: the checkpoint layer to start from, or None

    def prepare_disks(self) -> list[PreparedDisk]:
        prepared = []
        for index, disk in enumerate(self.vm.disks):
            path = self.dir / f"disk{index}-{disk.name}.qcow2"
            path.unlink(missing_ok=True)  # left by an earlier attempt of this build
            path = self.cache_disk_path(index, disk.name) or path
            parent = self.parent_disk(index)
            checkpoint = self.reuse_base(index)
            if checkpoint is not None:
                self.ctx.images.create_overlay(checkpoint, path, backing_format="qcow2")
                self.log(f"disk {disk.name}: an overlay on the step cache's checkpoint")
            elif index == 0 and self.vm.source.url:
                self.note_size(disk, self.import_source(path, disk.size))
            elif parent is not None:
                virtual = self.ctx.images.virtual_size(parent, fmt="qcow2")
                grow = disk.size if disk.size > virtual else None
                self.ctx.images.create_overlay(parent, path, backing_format="qcow2", size=grow)
                self.note_size(disk, virtual)
            else:
                self.ctx.images.create_blank(path, disk.size)
                if index == 0 and self.vm.source.kind == "blank":
                    self.log(f"disk {disk.name}: blank, {disk.size} bytes, for the installer")
            prepared.append(PreparedDisk(disk.name, path, disk.bus, max(disk.size, 0)))
        return prepared

    def import_source(self, dest: Path, size: int) -> int:
        """The source image as a standalone qcow2 ``dest`` of this build, grown to ``size``;
        returns the source's own virtual size. Never an overlay of the cached download: the
        cache stays private to the portal and QEMU never opens a downloaded file."""
        source = self.vm.source
        assert source.url is not None  # only called for a URL source
        cached, image = fetch_image(
            source.url,
            source.checksum,
            self.config.cache_dir,
            policy=self.config.fetch_policy,
            should_stop=lambda: self.stopper.stopped,
            log=self.log,
        )
        self.ctx.images.convert(
            cached, dest, src_format=image.format, timeout=max(self.remaining(), 1.0)
        )
        if size > image.virtual_size:
            self.ctx.images.resize(dest, size, fmt="qcow2")
        return image.virtual_size

    def note_size(self, disk: Disk, virtual: int) -> None:
        """Say how the declared size of ``disk`` compares to its source's ``virtual`` size."""
        if disk.size > virtual:
            self.log(f"disk {disk.name}: grown from {virtual} to {disk.size} bytes")
        elif disk.size < virtual:
            self.log(
                f"disk {disk.name}: the source is {virtual} bytes, larger than the "
                f"declared {disk.size}; keeping the source's size (disks are never shrunk)"
            )

    def parent_disk(self, index: int) -> Path | None:
        """Disk ``index`` of the parent template of a ``buildRef`` source, if it has one."""
        parents = self.plan.parent_disks
        if self.vm.source.build_ref is not None and parents:
            return parents[index] if index < len(parents) else None
        return None
