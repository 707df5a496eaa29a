"""The disks of a build VM: the source imported as a standalone copy, parents' overlays, blanks.

`VMDisks` is a mixin of engine.vm.VMRunner (it uses the runner's vm, config, dir, parent_disks,
stopper, remaining and log). Everything here happens before the VM boots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ruddervirt.engine.sources import fetch_image
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.manifest.model import Disk


@dataclass
class PreparedDisk:
    name: str
    path: Path
    bus: str
    size: int


class VMDisks:
    """Disk preparation of a build VM."""

    parent_disks: list[Path] | None

    def prepare_disks(self) -> list[PreparedDisk]:
        prepared = []
        for index, disk in enumerate(self.vm.disks):
            path = self.dir / f"disk{index}-{disk.name}.qcow2"
            path.unlink(missing_ok=True)  # left by an earlier attempt of this build
            parent = self.parent_disk(index)
            if index == 0 and self.vm.source.url:
                self.note_size(disk, self.import_source(path, disk.size))
            elif parent is not None:
                virtual = qimg.virtual_size(parent, fmt="qcow2")
                grow = disk.size if disk.size > virtual else None
                qimg.create_overlay(parent, path, backing_format="qcow2", size=grow)
                self.note_size(disk, virtual)
            else:
                qimg.create_blank(path, disk.size)
                if index == 0 and self.vm.source.kind == "blank":
                    self.log(f"disk {disk.name}: blank, {disk.size} bytes, for the installer")
            prepared.append(PreparedDisk(disk.name, path, disk.bus, max(disk.size, 0)))
        return prepared

    def import_source(self, dest: Path, size: int) -> int:
        """The source image as a standalone qcow2 ``dest`` of this build, grown to ``size``;
        returns the source's own virtual size. Never an overlay of the cached download: the
        cache stays private to the portal and QEMU never opens a downloaded file."""
        source = self.vm.source
        cached, image = fetch_image(
            source.url,
            source.checksum,
            self.config.cache_dir,
            policy=self.config.fetch_policy,
            should_stop=lambda: self.stopper.stopped,
            log=self.log,
        )
        qimg.convert(cached, dest, src_format=image.format, timeout=max(self.remaining(), 1.0))
        if size > image.virtual_size:
            qimg.resize(dest, size, fmt="qcow2")
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
        if self.vm.source.build_ref is not None and self.parent_disks:
            return self.parent_disks[index] if index < len(self.parent_disks) else None
        return None
