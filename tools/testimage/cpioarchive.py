"""A writer for the cpio "newc" archives that the Linux kernel unpacks as its initramfs."""

from __future__ import annotations

import stat
from pathlib import Path


class CpioWriter:
    """Writes a cpio archive in the "newc" format the kernel unpacks, owned by root, mtime 0."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.inode = 0

    def add(self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self.inode, mode, 0, 0, nlink, 0, len(body), 0, 0, *rdev, len(name) + 1, 0)
        self.data += b"070701" + "".join(f"{f:08x}" for f in fields).encode()
        self.data += name.encode() + b"\0"
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def add_tree(self, source: Path, prefix: str) -> None:
        """Add `source` (a folder) and everything below it as `prefix`."""
        self.add(prefix, stat.S_IFDIR | 0o755)
        for path in sorted(source.rglob("*")):
            name = f"{prefix}/{path.relative_to(source)}"
            if path.is_dir():
                self.add(name, stat.S_IFDIR | 0o755)
            else:
                self.add(name, stat.S_IFREG | 0o644, path.read_bytes())

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.data)
