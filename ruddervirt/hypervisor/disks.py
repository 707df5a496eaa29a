"""Disk images through ``qemu-img`` (every call bounded by a timeout, see ``ruddervirt.proc``).

Contracts:

* Formats are always given to qemu-img (``-f``/``-F``/``-O``), never probed from the image
  contents: a raw image could otherwise pose as qcow2 pointing at a host file as its backing.
* Backing files are recorded by absolute path.
* Functions that write a whole new image (:func:`convert`, :func:`copy_full`) write to
  ``<dest>.partial`` and rename it into place, so an interrupted capture never leaves a
  half-written file under the final name.
* Files handed to QEMU under ``qemu:///system`` must sit in folders the ``libvirt-qemu`` user
  can traverse; :func:`check_qemu_can_reach` says which folder blocks it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ruddervirt.proc import run

QEMU_IMG = "qemu-img"
QEMU_USER = "libvirt-qemu"
INFO_TIMEOUT_S = 30.0
CREATE_TIMEOUT_S = 60.0
COPY_TIMEOUT_S = 3600.0

ImageFormat = Literal["qcow2", "raw"]


class DiskError(Exception):
    """A disk operation was refused before qemu-img ran (bad size, unreachable folder, ...)."""


def info(path: Path, *, fmt: ImageFormat | None = None) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``path`` (``virtual-size``, ``format``, ...).

    ``--force-share`` lets it read images a running VM holds open. Without ``fmt`` qemu-img
    probes the format: only do that for images we created.
    """
    args = [QEMU_IMG, "info", "--output=json", "--force-share"]
    if fmt is not None:
        args += ["-f", fmt]
    result = run([*args, Path(path)], timeout=INFO_TIMEOUT_S)
    return json.loads(result.stdout)


def backing_chain(path: Path) -> list[dict[str, Any]]:
    """``info`` of ``path`` and every image below it, top first (qemu-img ``--backing-chain``)."""
    args: list[str | Path] = [
        QEMU_IMG, "info", "--output=json", "--force-share", "--backing-chain", Path(path)
    ]  # fmt: skip
    result = run(args, timeout=INFO_TIMEOUT_S)
    return json.loads(result.stdout)


def backing_of(path: Path, *, fmt: ImageFormat = "qcow2") -> tuple[str, str] | None:
    """The backing file of ``path`` as recorded in it (maybe relative to its folder) and
    that file's format, or None when it has none. Reads only ``path`` itself, so it works
    when the backing file is missing. Raises ``DiskError`` for a backing file recorded
    without its format (it would be probed: see the module's contract)."""
    data = info(path, fmt=fmt)
    backing = data.get("backing-filename")
    if not backing:
        return None
    backing_format = data.get("backing-filename-format")
    if backing_format not in ("qcow2", "raw"):
        raise DiskError(f"{path}: its backing file {backing} has no known format recorded")
    return str(backing), str(backing_format)


def rebase_unsafe(path: Path, backing: str, *, backing_format: ImageFormat) -> None:
    """Record ``backing`` (relative to the folder of ``path``, or absolute) as the backing
    file of qcow2 ``path`` without reading any data (``qemu-img rebase -u``): for a chain
    whose files moved, the same contents under a new name."""
    args: list[str | Path] = [
        QEMU_IMG, "rebase", "-u", "-f", "qcow2", "-F", backing_format, "-b", backing, Path(path)
    ]  # fmt: skip
    run(args, timeout=CREATE_TIMEOUT_S)


def virtual_size(path: Path, *, fmt: ImageFormat | None = None) -> int:
    """The guest-visible size of ``path`` in bytes."""
    return int(info(path, fmt=fmt)["virtual-size"])


def create_blank(path: Path, size: int, *, fmt: ImageFormat = "qcow2") -> None:
    """Create an empty (sparse) image of ``size`` bytes. Refuses to overwrite an existing file."""
    _check_size(size)
    _refuse_existing(path)
    run([QEMU_IMG, "create", "-q", "-f", fmt, Path(path), str(size)], timeout=CREATE_TIMEOUT_S)


def create_overlay(
    base: Path, dest: Path, backing_format: ImageFormat, *, size: int | None = None
) -> None:
    """Create a qcow2 ``dest`` whose backing file is ``base`` (absolute path, given format).

    ``size`` (bytes) makes the overlay bigger than its base; default: the base's size.
    Refuses to overwrite an existing file.
    """
    base = Path(base).resolve()
    if not base.is_file():
        raise DiskError(f"backing image {base} does not exist")
    _refuse_existing(dest)
    args: list[str | Path] = [
        QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", base, Path(dest)
    ]  # fmt: skip
    if size is not None:
        _check_size(size)
        args.append(str(size))
    run(args, timeout=CREATE_TIMEOUT_S)


def resize(path: Path, size: int, *, fmt: ImageFormat = "qcow2") -> None:
    """Grow ``path`` to ``size`` bytes; equal size is a no-op, shrinking raises ``DiskError``."""
    _check_size(size)
    current = virtual_size(path, fmt=fmt)
    if size < current:
        raise DiskError(f"refusing to shrink {path} from {current} to {size} bytes")
    if size > current:
        run([QEMU_IMG, "resize", "-q", "-f", fmt, Path(path), str(size)], timeout=CREATE_TIMEOUT_S)


def convert(
    src: Path,
    dest: Path,
    compress: bool = False,
    *,
    src_format: ImageFormat = "qcow2",
    timeout: float = COPY_TIMEOUT_S,
) -> None:
    """Write ``src`` and its whole backing chain into one standalone qcow2 ``dest``.

    This is how templates are captured: the result has no backing file. ``compress`` trades
    CPU time for a smaller file. The image must not be in use by a running VM.
    """
    _write_whole_image(src, dest, src_format, "qcow2", compress=compress, timeout=timeout)


def copy_full(
    src: Path,
    dest: Path,
    *,
    src_format: ImageFormat = "qcow2",
    timeout: float = COPY_TIMEOUT_S,
) -> None:
    """A full, independent copy of ``src`` in its own format (backing chain flattened, sparse)."""
    _write_whole_image(src, dest, src_format, src_format, compress=False, timeout=timeout)


def _write_whole_image(
    src: Path,
    dest: Path,
    src_format: ImageFormat,
    dest_format: ImageFormat,
    *,
    compress: bool,
    timeout: float,
) -> None:
    _refuse_existing(dest)
    args: list[str | Path] = [QEMU_IMG, "convert", "-f", src_format, "-O", dest_format]
    if compress:
        args.append("-c")
    with _partial(Path(dest)) as partial:
        run([*args, Path(src), partial], timeout=timeout)


@contextlib.contextmanager
def _partial(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest``; rename it to ``dest`` on success, else delete it."""
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise DiskError(f"size must be a positive number of bytes, got {size!r}")


def _refuse_existing(path: Path) -> None:
    if Path(path).exists():
        raise DiskError(f"{path} already exists")


def check_qemu_can_reach(path: Path, user: str = QEMU_USER) -> None:
    """Raise ``DiskError`` naming the first parent folder of ``path`` that ``user`` cannot enter.

    Folders that do not exist yet are not judged. Does nothing when ``user`` does not exist
    (session libvirt, other distributions).
    """
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {account.pw_gid}
    for folder in reversed(Path(path).absolute().parents):
        try:
            st = folder.stat()
        except FileNotFoundError:
            return  # folders still to be created: nothing more to judge
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            raise DiskError(
                f"{folder} is not traversable by {user} (mode {stat.filemode(st.st_mode)}); "
                f"QEMU could not open {path}"
            )
