"""The image files of a build: disks through qemu-img, the cloud-init seed ISO.

``Images`` is the seam the build engine programs against; ``QemuImages`` is the real thing
(``disks.py`` and ``seed.py``), ``FakeImages`` (fake_images.py) writes small placeholder files
for unit tests. Both raise the real functions' errors (``DiskError``,
``ExternalCommandError``) in the same situations they model.

As in disks.py, every operation that reads an image is told its format: nothing here probes
a format from an image's contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ruddervirt.hypervisor import disks, seed
from ruddervirt.hypervisor.disks import COPY_TIMEOUT_S, ImageFormat


class Images(Protocol):
    """The image operations of a build (contracts: the functions of disks.py / seed.py)."""

    def virtual_size(self, path: Path, *, fmt: ImageFormat) -> int:
        """The guest-visible size of the ``fmt`` image ``path``, in bytes."""
        ...

    def create_blank(self, path: Path, size: int) -> None:
        """An empty qcow2 of ``size`` bytes; refuses to overwrite."""
        ...

    def create_overlay(
        self, base: Path, dest: Path, backing_format: ImageFormat, *, size: int | None = None
    ) -> None:
        """A qcow2 ``dest`` backed by ``base``, optionally grown to ``size``."""
        ...

    def resize(self, path: Path, size: int, *, fmt: ImageFormat = "qcow2") -> None:
        """Grow ``path`` to ``size`` bytes (equal: nothing; smaller: DiskError)."""
        ...

    def convert(
        self,
        src: Path,
        dest: Path,
        *,
        src_format: ImageFormat = "qcow2",
        compress: bool = False,
        timeout: float = COPY_TIMEOUT_S,
    ) -> None:
        """The ``src_format`` image ``src`` and its backing chain flattened into a standalone
        qcow2 ``dest`` (written under another name and renamed into place)."""
        ...

    def make_seed(
        self, dest: Path, *, user_data: str, meta_data: str, network_config: str | None = None
    ) -> None:
        """A NoCloud seed ISO (label ``cidata``) at ``dest``."""
        ...


class QemuImages:
    """``Images`` through qemu-img and genisoimage."""

    def virtual_size(self, path: Path, *, fmt: ImageFormat) -> int:
        return disks.virtual_size(path, fmt=fmt)

    def create_blank(self, path: Path, size: int) -> None:
        disks.create_blank(path, size)

    def create_overlay(
        self, base: Path, dest: Path, backing_format: ImageFormat, *, size: int | None = None
    ) -> None:
        disks.create_overlay(base, dest, backing_format, size=size)

    def resize(self, path: Path, size: int, *, fmt: ImageFormat = "qcow2") -> None:
        disks.resize(path, size, fmt=fmt)

    def convert(
        self,
        src: Path,
        dest: Path,
        *,
        src_format: ImageFormat = "qcow2",
        compress: bool = False,
        timeout: float = COPY_TIMEOUT_S,
    ) -> None:
        disks.convert(src, dest, compress, src_format=src_format, timeout=timeout)

    def make_seed(
        self, dest: Path, *, user_data: str, meta_data: str, network_config: str | None = None
    ) -> None:
        seed.make_nocloud_seed(
            dest, user_data=user_data, meta_data=meta_data, network_config=network_config
        )
