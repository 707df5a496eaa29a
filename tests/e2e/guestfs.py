"""Reading files out of a captured disk of the tiny image without booting it.

The tiny image is a whole-disk ext2 file system: flatten the qcow2 chain to raw and let
debugfs read it. (A real cloud image would need a partition offset; the tiny one has none.)
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flattened(disk: Path) -> Iterator[Path]:
    """The qcow2 chain of `disk` as one raw file in a temporary folder (removed afterwards),
    for debugfs and e2fsck."""
    with tempfile.TemporaryDirectory(prefix="rv-fs-") as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)],
            check=True,
            timeout=120,
            capture_output=True,
        )
        yield raw


def read_file(disk: Path, guest_path: str) -> bytes:
    with flattened(disk) as raw:
        out = raw.parent / "out"
        subprocess.run(
            ["debugfs", "-R", f"dump -p {guest_path} {out}", str(raw)],
            check=True,
            timeout=60,
            capture_output=True,
        )
        if not out.exists():
            raise FileNotFoundError(f"{guest_path} is not in {disk}")
        return out.read_bytes()


def list_dir(disk: Path, guest_path: str) -> list[str]:
    with flattened(disk) as raw:
        result = subprocess.run(
            ["debugfs", "-R", f"ls -p {guest_path}", str(raw)],
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        )
    names = []
    for line in result.stdout.splitlines():
        parts = line.strip("/").split("/")
        if len(parts) >= 5 and parts[4] not in (".", ".."):
            names.append(parts[4])
    return sorted(names)


def fsck(disk: Path) -> subprocess.CompletedProcess[str]:
    """``e2fsck -fn`` of the tiny image's disk (read-only: it changes nothing): exit status
    0 when the file system has no error."""
    with flattened(disk) as raw:
        return subprocess.run(
            ["e2fsck", "-fn", str(raw)], check=False, timeout=120, capture_output=True, text=True
        )
