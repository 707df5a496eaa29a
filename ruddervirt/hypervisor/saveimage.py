"""libvirt's QEMU save image, read by many restores at once (warm clones).

``virDomainSave`` writes one file: a header, the domain's XML (and a cookie), then QEMU's
migration stream (``QEVM``...). ``virDomainRestoreFlags`` refuses a file whose XML names
another domain (name and UUID must be the restored domain's, whatever XML is passed beside
it), so one saved guest cannot be restored as many differently named domains from the file
itself. :func:`feed` therefore hands libvirt a named pipe instead: the header and XML
rewritten for the domain being restored (its name and UUID; the rest as saved, for libvirt's
ABI check against the domain's own XML), followed by the shared file's QEMU stream, copied
as QEMU reads it. The shared file is only read, never changed or copied to disk.

Plain Python (no libvirt): the libvirt driver calls it around ``restoreFlags``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"LibvirtQemudSave"  # a complete image ("LibvirtQemudPart" while being written)
# libvirt's virQEMUSaveHeader: magic, then version, data_len, was_running, compressed,
# cookieOffset and 14 unused 32-bit words, in host (little-endian) order.
HEADER = struct.Struct("<16s5I14I")
STREAM_MAGIC = b"QEVM"  # QEMU's migration stream starts so
CHUNK = 1 << 20
WRITER_JOIN_S = 30.0
OPEN_POLL_S = 0.01  # how often the writer looks for libvirtd opening the pipe
NAMESPACES = {  # keep the prefixes libvirt wrote (ElementTree would rename them ns0, ...)
    "qemu": "http://libvirt.org/schemas/domain/qemu/1.0",
}


class SaveImageError(Exception):
    """The file is not a complete, uncompressed libvirt save image; str() says why."""


@dataclass(frozen=True)
class SaveImage:
    """What a save image holds: its header fields, its XML and cookie, where QEMU's stream
    starts."""

    version: int
    was_running: int
    compressed: int
    xml: str
    cookie: bytes
    stream_offset: int

    def header_for(self, name: str, uuid: str) -> bytes:
        """The header and XML of this image as if domain `name` (`uuid`) had been saved."""
        xml = renamed(self.xml, name, uuid).encode() + b"\0"
        data = xml + self.cookie
        fields = (self.version, len(data), self.was_running, self.compressed, len(xml))
        return HEADER.pack(MAGIC, *fields, *([0] * 14)) + data


def read(path: Path) -> SaveImage:
    """The header and XML of the save image `path` (SaveImageError when it is not one)."""
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) != HEADER.size:
            raise SaveImageError(f"{path}: too short for a save image")
        magic, version, data_len, running, compressed, cookie_at, *_ = HEADER.unpack(raw)
        if magic != MAGIC:
            raise SaveImageError(f"{path}: not a complete libvirt save image ({magic[:16]!r})")
        if compressed:
            raise SaveImageError(f"{path}: compressed save images are not supported")
        data = f.read(data_len)
        stream = f.read(len(STREAM_MAGIC))
    if len(data) != data_len or stream != STREAM_MAGIC:
        raise SaveImageError(f"{path}: no QEMU state after the domain's XML")
    xml_end = cookie_at or data_len
    cookie = data[xml_end:].rstrip(b"\0") if cookie_at else b""
    return SaveImage(
        version=version,
        was_running=running,
        compressed=compressed,
        xml=data[:xml_end].split(b"\0", 1)[0].decode(),
        cookie=cookie + b"\0" if cookie else b"",
        stream_offset=HEADER.size + data_len,
    )


def renamed(xml: str, name: str, uuid: str) -> str:
    """The domain XML `xml` with its name and UUID replaced."""
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(xml)  # noqa: S314 - libvirtd's own XML, from our save file
    for tag, value in (("name", name), ("uuid", uuid)):
        node = root.find(tag)
        if node is None:
            raise SaveImageError(f"the saved domain has no <{tag}>")
        node.text = value
    return ET.tostring(root, encoding="unicode")


@contextlib.contextmanager
def feed(path: Path, name: str, uuid: str) -> Iterator[Path]:
    """A named pipe that yields the save image `path` rewritten for domain `name` (see the
    module docstring), for as long as the block runs: pass it to libvirt's restore inside
    the block. When the reader stops early (libvirt refused the XML), the copy stops too;
    when no reader ever came, the writer gives up as the block ends."""
    image = read(path)
    folder = Path(tempfile.mkdtemp(prefix="rv-restore-"))
    pipe = folder / "state"
    os.mkfifo(pipe, 0o600)
    done = threading.Event()
    writer = threading.Thread(
        target=_write, args=(pipe, image, path, name, uuid, done), daemon=True
    )
    writer.start()
    try:
        yield pipe
    finally:
        done.set()
        writer.join(WRITER_JOIN_S)
        shutil.rmtree(folder, ignore_errors=True)


def _write(
    pipe: Path, image: SaveImage, path: Path, name: str, uuid: str, done: threading.Event
) -> None:
    fd = _open_writer(pipe, done)
    if fd is None:
        return
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            out.write(image.header_for(name, uuid))
            src.seek(image.stream_offset)
            while chunk := src.read(CHUNK):
                out.write(chunk)
    except OSError:  # the reader went away: a refused restore
        return


def _open_writer(pipe: Path, done: threading.Event) -> int | None:
    """The pipe's write end once a reader opened it (None when the block ended first)."""
    while not done.is_set():
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                return None
            done.wait(OPEN_POLL_S)
            continue
        os.set_blocking(fd, True)
        return fd
    return None
