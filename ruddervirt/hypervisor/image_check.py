"""Checking a disk image that came from outside (a downloaded source) before QEMU opens it.

Contracts:

* The format is determined once, here, from the image's first bytes (qcow2 by its magic,
  anything without a known magic is raw); qemu-img never guesses it. Formats other than
  qcow2 and raw are refused.
* A qcow2 image is refused when its header names a backing file, an external data file or
  encryption. This is read from the header by this module, before qemu-img sees the file,
  so qemu-img never opens a file (or a ``json:`` pseudo-URL) the image points at.
* Then ``qemu-img info -f <format>`` must agree: no backing file, no data file, and no
  ``json:`` reference anywhere in what it reports.
* Every refusal is :class:`ImageRefused` with a message saying what the image points at.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ruddervirt.hypervisor.disks import DiskError, ImageFormat, info

QCOW2_MAGIC = b"QFI\xfb"
# Magic bytes at offset 0 of formats QEMU could otherwise read with references to other files.
OTHER_MAGICS = {
    b"KDMV": "vmdk",
    b"# Disk DescriptorFile": "vmdk (descriptor)",
    b"COWD": "vmdk (ESX COW)",
    b"conectix": "vpc (VHD)",
    b"vhdxfile": "vhdx",
    b"QED\x00": "qed",
    b"<<< ": "vdi",
    b"WithoutFreeSpace": "parallels",
    b"WithouFreSpacExt": "parallels",
    b"Bochs Virtual HD Image": "bochs",
    b"OOOM": "qcow (version 1)",
}
HEADER_V2_LENGTH = 72
INCOMPAT_EXTERNAL_DATA_FILE = 1 << 2
EXT_END = 0x00000000
EXT_DATA_FILE = 0x44415441
MAX_HEADER_READ = 2 << 20  # the header and its extensions sit in the first cluster (<= 2 MiB)
MAX_NAME_SHOWN = 200


class ImageRefused(DiskError):
    """The image refers to other files, or is of a format we do not take."""


@dataclass(frozen=True)
class ImageInfo:
    """What the checks found: the format to give qemu-img (``-f``) and the guest size."""

    format: ImageFormat
    virtual_size: int


def detect_format(path: Path) -> ImageFormat:
    """``"qcow2"`` or ``"raw"`` from the first bytes of ``path``; ImageRefused for other
    image formats (vmdk, vhd, vdi, ...)."""
    with open(path, "rb") as handle:
        start = handle.read(64)
    if start.startswith(QCOW2_MAGIC):
        return "qcow2"
    for magic, name in OTHER_MAGICS.items():
        if start.startswith(magic):
            raise ImageRefused(f"it is a {name} image; only qcow2 and raw images are supported")
    return "raw"


def check_image(path: Path) -> ImageInfo:
    """Determine the format of ``path`` and refuse an image that depends on other files.

    Returns the format and virtual size; raises ImageRefused (or ExternalCommandError when
    qemu-img cannot read the image at all)."""
    fmt = detect_format(path)
    if fmt == "qcow2":
        check_qcow2_header(path)
    report = info(path, fmt=fmt)
    _check_report(report, fmt)
    return ImageInfo(format=fmt, virtual_size=int(report["virtual-size"]))


def check_qcow2_header(path: Path) -> None:
    """Refuse a qcow2 whose header names a backing file, an external data file or
    encryption (read by us: qemu-img has not opened the file yet)."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_V2_LENGTH)
        if len(head) < HEADER_V2_LENGTH:
            raise ImageRefused("its qcow2 header is truncated")
        fields = struct.unpack(">4sIQIIQI", head[:36])
        _magic, version, backing_offset, backing_size, cluster_bits, _size, crypt = fields
        if version not in (2, 3):
            raise ImageRefused(f"it is qcow2 version {version}; only versions 2 and 3 are known")
        if backing_offset or backing_size:
            name = _read_name(handle, backing_offset, backing_size)
            raise ImageRefused(f"it has a backing file ({name}): source images must stand alone")
        if crypt:
            raise ImageRefused("it is an encrypted qcow2 image, which cannot be imported")
        handle.seek(0)
        header = handle.read(min(1 << min(cluster_bits, 21), MAX_HEADER_READ))
    if version == 3:
        _check_v3(header)


def _check_v3(header: bytes) -> None:
    if len(header) < 104:
        raise ImageRefused("its qcow2 version 3 header is truncated")
    incompatible = struct.unpack(">Q", header[72:80])[0]
    if incompatible & INCOMPAT_EXTERNAL_DATA_FILE:
        raise ImageRefused("it keeps its data in an external data file: images must stand alone")
    header_length = struct.unpack(">I", header[100:104])[0]
    for kind, data in _extensions(header, header_length):
        if kind == EXT_DATA_FILE:
            raise ImageRefused(
                f"it names an external data file ({_shown(data)}): images must stand alone"
            )


def _extensions(header: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each header extension, stopping at the end marker or the buffer."""
    while offset + 8 <= len(header):
        kind, length = struct.unpack(">II", header[offset : offset + 8])
        if kind == EXT_END:
            return
        yield kind, header[offset + 8 : offset + 8 + length]
        offset += 8 + (length + 7) // 8 * 8


def _read_name(handle: BinaryIO, offset: int, size: int) -> str:
    handle.seek(offset)
    return _shown(handle.read(min(size, 1023)))


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= MAX_NAME_SHOWN else text[:MAX_NAME_SHOWN] + "...")


def _check_report(report: dict[str, Any], fmt: ImageFormat) -> None:
    """What qemu-img found must agree with the header: the format, no references."""
    if report.get("format") != fmt:
        raise ImageRefused(f"qemu-img reads it as {report.get('format')!r}, not {fmt}")
    for key in ("backing-filename", "full-backing-filename"):
        if report.get(key):
            raise ImageRefused(f"it has a backing file ({_shown(str(report[key]).encode())})")
    data = report.get("format-specific", {}).get("data", {})
    if isinstance(data, dict) and data.get("data-file"):
        raise ImageRefused(f"it names an external data file ({_shown(data['data-file'].encode())})")
    reference = next((text for text in _strings(report) if text.startswith("json:")), None)
    if reference is not None:
        raise ImageRefused(f"it refers to {_shown(reference.encode())}")


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
