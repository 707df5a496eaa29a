"""An in-process :class:`~ruddervirt.hypervisor.images.Images` for unit tests.

Images are small JSON files recording what qemu-img would have made (format, virtual size,
backing file), so ``virtual_size`` of an image the fake made answers like qemu-img; read as
raw, any file is an image of its own length (as qemu-img reads it), while reading a file the
fake did not make as qcow2 fails as qemu-img does (``CommandFailed``). Seeds are JSON files of
their texts (``seeds`` keeps them too, for assertions). It refuses what the real functions
refuse: overwriting, a missing backing file, sizes that are not positive, shrinking.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from ruddervirt.hypervisor.disks import COPY_TIMEOUT_S, QEMU_IMG, DiskError, ImageFormat
from ruddervirt.proc import CommandFailed

_MAGIC = "ruddervirt-fake-image"


class FakeImages:
    """See the module docstring. ``made`` lists every image written, in order."""

    def __init__(self) -> None:
        self.made: list[Path] = []
        self.seeds: dict[Path, dict[str, str | None]] = {}
        self._lock = threading.Lock()

    def virtual_size(self, path: Path, *, fmt: ImageFormat) -> int:
        record = self._record(path)
        if record is not None and record["format"] == fmt:
            return int(record["virtual_size"])
        if fmt == "raw":
            return Path(path).stat().st_size
        raise CommandFailed(
            [QEMU_IMG, "info", "-f", fmt, str(path)],
            1,
            f"qemu-img: Could not open '{path}': Image is not in {fmt} format",
        )

    def create_blank(self, path: Path, size: int) -> None:
        self._write(path, {"format": "qcow2", "virtual_size": _checked(size), "backing": None})

    def create_overlay(
        self, base: Path, dest: Path, backing_format: ImageFormat, *, size: int | None = None
    ) -> None:
        base = Path(base).resolve()
        if not base.is_file():
            raise DiskError(f"backing image {base} does not exist")
        virtual = self.virtual_size(base, fmt=backing_format) if size is None else _checked(size)
        self._write(dest, {"format": "qcow2", "virtual_size": virtual, "backing": str(base)})

    def resize(self, path: Path, size: int, *, fmt: ImageFormat = "qcow2") -> None:
        _checked(size)
        current = self.virtual_size(path, fmt=fmt)
        if size < current:
            raise DiskError(f"refusing to shrink {path} from {current} to {size} bytes")
        record = self._record(path)
        if record is not None and record["format"] == fmt:
            Path(path).write_text(json.dumps({**record, "virtual_size": size}))
        elif size > current:
            os.truncate(path, size)  # a raw file the fake did not make

    def convert(
        self,
        src: Path,
        dest: Path,
        *,
        src_format: ImageFormat = "qcow2",
        compress: bool = False,
        timeout: float = COPY_TIMEOUT_S,
    ) -> None:
        virtual = self.virtual_size(src, fmt=src_format)
        self._write(dest, {"format": "qcow2", "virtual_size": virtual, "backing": None})

    def make_seed(
        self, dest: Path, *, user_data: str, meta_data: str, network_config: str | None = None
    ) -> None:
        texts = {"user-data": user_data, "meta-data": meta_data, "network-config": network_config}
        Path(dest).write_text(json.dumps(texts))
        with self._lock:
            self.seeds[Path(dest)] = texts

    def _write(self, path: Path, record: dict[str, object]) -> None:
        path = Path(path)
        if path.exists():
            raise DiskError(f"{path} already exists")
        path.write_text(json.dumps({"magic": _MAGIC, **record}))
        with self._lock:
            self.made.append(path)

    @staticmethod
    def _record(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(Path(path).read_bytes())
        except (ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("magic") == _MAGIC else None


def _checked(size: int) -> int:
    if size <= 0:
        raise DiskError(f"image size must be positive, got {size}")
    return size
