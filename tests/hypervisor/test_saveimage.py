"""Reading libvirt save images and feeding one, renamed, to a restore through a pipe."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ruddervirt.hypervisor import saveimage
from ruddervirt.hypervisor.domain_xml import build_domain_xml, restore_xml
from ruddervirt.hypervisor.specs import DomainSpec

XML = (
    "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    "<name>rv-w1-web</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
    "<qemu:commandline><qemu:arg value='-netdev'/></qemu:commandline></domain>"
)
COOKIE = b"<qemu-migration><hostname>h</hostname></qemu-migration>\0"
STREAM = b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 4096  # 1 MiB of "QEMU state"


def write_image(path: Path, *, magic: bytes = saveimage.MAGIC, stream: bytes = STREAM) -> Path:
    """A save image laid out as libvirt writes one: header, XML, cookie, zero padding."""
    xml = XML.encode() + b"\0"
    data = xml + COOKIE + b"\0" * 4096
    header = saveimage.HEADER.pack(magic, 2, len(data), 1, 0, len(xml), *([0] * 14))
    path.write_bytes(header + data + stream)
    return path


def test_reading_an_image_finds_its_xml_cookie_and_stream(tmp_path):
    image = saveimage.read(write_image(tmp_path / "state.sav"))
    assert image.xml == XML and image.cookie == COOKIE and image.version == 2
    raw = (tmp_path / "state.sav").read_bytes()
    assert raw[image.stream_offset :] == STREAM


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"magic": b"LibvirtQemudPart"}, "not a complete libvirt save image"),
        ({"stream": b"garbage"}, "no QEMU state after the domain's XML"),
    ],
)
def test_a_partial_or_foreign_file_is_refused(tmp_path, kwargs, why):
    with pytest.raises(saveimage.SaveImageError, match=why):
        saveimage.read(write_image(tmp_path / "state.sav", **kwargs))


def test_the_rewritten_header_names_the_restored_domain_and_keeps_the_rest(tmp_path):
    image = saveimage.read(write_image(tmp_path / "a.sav"))
    renamed = tmp_path / "b.sav"
    renamed.write_bytes(image.header_for("rv-c7-web", "99999999-8888-7777-6666-555555555555"))
    renamed.write_bytes(renamed.read_bytes() + STREAM)
    again = saveimage.read(renamed)
    assert "<name>rv-c7-web</name>" in again.xml
    assert "<uuid>99999999-8888-7777-6666-555555555555</uuid>" in again.xml
    assert "<qemu:commandline>" in again.xml  # the namespace prefix libvirt expects
    assert again.cookie == COOKIE


def test_the_pipe_carries_the_renamed_header_then_the_shared_stream_unchanged(tmp_path):
    shared = write_image(tmp_path / "state.sav")
    before = shared.read_bytes()
    with saveimage.feed(shared, "rv-c7-web", "9" * 8 + "-1111-2222-3333-" + "4" * 12) as pipe:
        got = pipe.read_bytes()  # as libvirtd reads it
    header = saveimage.read(shared).header_for("rv-c7-web", "9" * 8 + "-1111-2222-3333-" + "4" * 12)
    assert got == header + STREAM
    assert shared.read_bytes() == before  # only read
    assert not pipe.exists()


def test_a_reader_that_never_comes_or_stops_early_does_not_hang_the_feed(tmp_path):
    shared = write_image(tmp_path / "state.sav")
    with saveimage.feed(shared, "rv-c8-web", "1" * 8 + "-1111-2222-3333-" + "1" * 12):
        pass  # libvirt refused before opening the pipe
    done = threading.Event()

    def early_stop() -> None:
        uuid = "1" * 8 + "-1111-2222-3333-" + "1" * 12
        with saveimage.feed(shared, "rv-c8-web", uuid) as pipe, pipe.open("rb") as f:
            f.read(100)  # libvirt read the header, then refused the XML
        done.set()

    threading.Thread(target=early_stop, daemon=True).start()
    assert done.wait(10)


def spec(name: str, disk: Path) -> DomainSpec:
    from ruddervirt.hypervisor.specs import DiskSpec

    return DomainSpec(
        name=name, vcpus=1, memory_bytes=256 * 2**20, domain_type="qemu",
        disks=(DiskSpec(path=disk, target_bus="virtio"), DiskSpec(path=disk.with_suffix(".iso"),
               target_bus="usb", format="raw", device="cdrom", readonly=True)),
    )  # fmt: skip


def test_restore_xml_is_ours_with_the_usb_addresses_libvirt_gave_the_saved_guest(tmp_path):
    import xml.etree.ElementTree as ET

    saved = ET.fromstring(build_domain_xml(spec("rv-w1-web", tmp_path / "w.qcow2")))
    for device in saved.iterfind("devices/*"):
        if device.get("bus") == "usb" or device.find("target[@bus='usb']") is not None:
            ET.SubElement(device, "address", type="usb", bus="0", port=str(len(device)))
    ours = ET.fromstring(
        restore_xml(spec("rv-c1-web", tmp_path / "c1.qcow2"), uuid="1" * 8 + "-1111-2222-3333-"
                    + "1" * 12, saved_xml=ET.tostring(saved, encoding="unicode"))
    )  # fmt: skip
    assert ours.findtext("name") == "rv-c1-web"
    assert ours.find("devices/disk/source").get("file") == str(tmp_path / "c1.qcow2")
    tablet = ours.find("devices/input[@type='tablet']/address")
    cdrom = ours.find("devices/disk[@device='cdrom']/address")
    saved_tablet = saved.find("devices/input[@type='tablet']/address")
    assert tablet is not None and tablet.attrib == saved_tablet.attrib
    assert cdrom is not None and cdrom.get("type") == "usb"
    # A device that has its own (PCI) address keeps ours.
    assert ours.find("devices/disk[@device='disk']/address").get("type") == "pci"
