"""Virtual floppy images: a FAT file system made from named files (installer answer files).

`make_floppy` writes a 1.44 MB image (2.88 MB when the files need it) with `mkfs.fat` and
copies each file in with `mcopy`, under its own name (long names get VFAT long-name entries,
which Windows Setup and Linux read: `Autounattend.xml` stays `Autounattend.xml`). Both
tools run through :func:`ruddervirt.proc.run` with timeouts; no mounting, no root needed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ruddervirt.proc import run

FLOPPY_KIB = (1440, 2880)
# FAT tables, root directory and rounding take ~25 KiB of a 1.44 MB floppy; keep a margin.
OVERHEAD_BYTES = 64 * 1024
CLUSTER_BYTES = 4096  # mkfs.fat may use up to 4 KiB clusters on 2.88 MB images
TOOL_TIMEOUT_S = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class FloppyError(ValueError):
    """The files do not fit on a floppy, or a name cannot be a FAT file name."""


def _tool(name: str) -> str:
    """The path of `name`, also when /usr/sbin is not on PATH (non-root users)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _TOOL_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return name  # proc.run reports it as not found


def _size(content: bytes | Path) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def floppy_kib(files: Mapping[str, bytes | Path]) -> int:
    """The smallest standard floppy size (KiB) the files fit on; FloppyError if none."""
    needed = OVERHEAD_BYTES + sum(
        -(-_size(c) // CLUSTER_BYTES) * CLUSTER_BYTES for c in files.values()
    )
    for kib in FLOPPY_KIB:
        if needed <= kib * 1024:
            return kib
    raise FloppyError(
        f"the floppy files take {needed // 1024} KiB, more than a {FLOPPY_KIB[-1]} KiB floppy "
        "holds; serve large files over httpDirectory instead"
    )


def check_names(names: list[str]) -> None:
    """Names must be plain file names, unique ignoring case (FAT ignores case)."""
    seen: set[str] = set()
    for name in names:
        if not _NAME.match(name):
            raise FloppyError(f"{name!r} cannot be a floppy file name")
        if name.lower() in seen:
            raise FloppyError(f"two floppy files are both named {name!r} (FAT ignores case)")
        seen.add(name.lower())


def make_floppy(path: Path, files: Mapping[str, bytes | Path], *, label: str = "RVFLOPPY") -> Path:
    """Write a FAT floppy image holding `files` (name -> content or a local file) to `path`.

    The image appears atomically; an existing file at `path` is replaced. Raises FloppyError
    (bad names, too large) or ExternalCommandError (mkfs.fat/mcopy failed or timed out)."""
    check_names(list(files))
    kib = floppy_kib(files)
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".floppy-", dir=path.parent) as tmp:
        image = Path(tmp) / "floppy.img"
        run([_tool("mkfs.fat"), "-C", "-n", label[:11].upper(), str(image), str(kib)],
            timeout=TOOL_TIMEOUT_S)  # fmt: skip
        env = _mtools_env()
        for index, (name, content) in enumerate(files.items()):
            source = content if isinstance(content, Path) else Path(tmp) / f"file{index}"
            if isinstance(content, bytes):
                source.write_bytes(content)
            run([_tool("mcopy"), "-i", str(image), "-D", "o", str(source), f"::{name}"],
                timeout=TOOL_TIMEOUT_S, env=env)  # fmt: skip
        image.chmod(0o644)
        image.replace(path)
    return path


def _mtools_env() -> dict[str, str]:
    # mtools checks the boot sector's geometry against its own idea of a floppy; ours is right.
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def list_floppy(path: Path) -> list[str]:
    """The names of the files on a floppy image (for tests and diagnostics)."""
    out = run(
        [_tool("mdir"), "-i", str(path), "-b", "::"], timeout=TOOL_TIMEOUT_S, env=_mtools_env()
    )
    lines = out.stdout.decode().splitlines()
    return sorted(line.strip().removeprefix("::/") for line in lines if line.strip())


def read_floppy_file(path: Path, name: str) -> bytes:
    """The content of file `name` on a floppy image."""
    out = run(
        [_tool("mtype"), "-i", str(path), f"::{name}"], timeout=TOOL_TIMEOUT_S, env=_mtools_env()
    )
    return out.stdout
