"""Build libvirt domain XML from a :class:`DomainSpec` (ElementTree, never string templates).

Guest PCI layout (bus 0). Every device gets an explicit address, so adding or removing a disk
or NIC never moves another device, and guests see the same NIC order in every clone:

======  =================================================================================
slot    device
======  =================================================================================
0x00    host bridge (implicit)
0x01    i440fx: PIIX3 ISA bridge, IDE, ACPI (implicit). q35: free (its ISA/SATA are at 0x1f)
0x02    VGA video
0x03    USB controller (qemu-xhci; the tablet for VNC pointers and USB disks hang off it)
0x04    virtio-scsi controller (only with SCSI disks)
0x05    SATA (AHCI) controller on i440fx, only with SATA disks; q35 has it built in at 1f.2
0x06    memory balloon
0x07    virtio RNG (fed from the host's /dev/urandom; lets guests make SSH keys at once)
0x08-0f virtio disks, in spec order (vda at 0x08, vdb at 0x09, ...)
0x10    virtio-serial controller: the qemu-guest-agent channel (``org.qemu.guest_agent.0``)
0x11-19 NICs with a manifest slot: manifest slot N -> PCI slot 0x10 + N
0x1a-1d further NICs without a slot (see below)
0x1e    management NIC (QEMU user-mode, restrict=on, SSH forward), last so it enumerates last
0x1f    q35: ICH9 LPC/SATA/SMBus (implicit)
======  =================================================================================

NICs without a slot take, in declaration order, the free NIC slots above the highest pinned
one, then the free ones below it. Linux enumerates PCI devices by address, so the manifest's
NICs come first in slot order (eth0 = lowest slot) and the management NIC comes last.

Every domain has the guest agent channel, a unix socket that libvirt creates and manages (so
``virsh qemu-agent-command`` and libvirt's agent API work whenever the guest runs qemu-ga).

Owner metadata lives in ``<metadata><rv:owner xmlns:rv="https://ruddervirt.example/xmlns/1">``
as ``<rv:tag key="kind">build</rv:tag>`` children; :func:`parse_owner_metadata` reads it back.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

from ruddervirt.hypervisor.specs import MAX_NICS, DiskSpec, DomainSpec, NicSpec

OWNER_NS = "https://ruddervirt.example/xmlns/1"
OWNER_PREFIX = "rv"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace(OWNER_PREFIX, OWNER_NS)
ET.register_namespace("qemu", QEMU_NS)

PCI_SLOT_VIDEO = 0x02
PCI_SLOT_USB = 0x03
PCI_SLOT_SCSI = 0x04
PCI_SLOT_SATA = 0x05
PCI_SLOT_BALLOON = 0x06
PCI_SLOT_RNG = 0x07
PCI_SLOTS_VIRTIO_DISKS = range(0x08, 0x10)
PCI_SLOT_VIRTIO_SERIAL = 0x10
NIC_SLOT_BASE = 0x10
PCI_SLOTS_NICS = range(0x11, 0x11 + MAX_NICS)  # 0x11-0x1d
PCI_SLOT_MGMT = 0x1E
Q35_SATA_SLOT = 0x1F  # the built-in ICH9 AHCI is 00:1f.2

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
MGMT_NETDEV_ID = "rvmgmt"
# QEMU's device for each NIC model (libvirt's <model type> names the same cards).
MGMT_DEVICES = {
    "virtio": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
}
VNC_LISTEN = "127.0.0.1"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _pci_address(parent: ET.Element, slot: int, function: int = 0) -> ET.Element:
    return _sub(
        parent,
        "address",
        type="pci",
        domain="0x0000",
        bus="0x00",
        slot=f"0x{slot:02x}",
        function=f"0x{function:x}",
    )


def nic_pci_slots(nics: Sequence[NicSpec]) -> list[int]:
    """The guest PCI slot of each NIC, in the order given (see the module docstring)."""
    pinned = {NIC_SLOT_BASE + nic.pci_slot for nic in nics if nic.pci_slot is not None}
    highest = max(pinned, default=NIC_SLOT_BASE)
    free = [slot for slot in PCI_SLOTS_NICS if slot not in pinned]
    candidates = iter([s for s in free if s > highest] + [s for s in free if s < highest])
    slots: list[int] = []
    for nic in nics:
        if nic.pci_slot is not None:
            slots.append(NIC_SLOT_BASE + nic.pci_slot)
            continue
        slot = next(candidates, None)
        if slot is None:
            raise ValueError(f"too many NICs: at most {len(PCI_SLOTS_NICS)}")
        slots.append(slot)
    return slots


def mgmt_mac_for(domain_name: str) -> str:
    """A stable QEMU-style MAC (52:54:00:xx:xx:xx) derived from the name."""
    digest = hashlib.sha256(domain_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def disk_targets(disks: Sequence[DiskSpec]) -> list[str]:
    """Guest target names: vdX for virtio, sdX shared by sata/scsi/usb, fdX for floppies."""
    counters = {"vd": 0, "sd": 0, "fd": 0}
    targets: list[str] = []
    for disk in disks:
        stem = {"virtio": "vd", "fdc": "fd"}.get(disk.target_bus, "sd")
        index = counters[stem]
        counters[stem] += 1
        if index >= 26 or (stem == "fd" and index >= 2):
            raise ValueError(f"too many {stem} disks")
        targets.append(stem + chr(ord("a") + index))
    return targets


def owner_metadata_element(metadata: Mapping[str, str]) -> ET.Element:
    """``<rv:owner>`` carrying one ``<rv:tag key=...>`` per entry (keys sorted, for stable XML)."""
    owner = ET.Element(f"{{{OWNER_NS}}}owner")
    for key in sorted(metadata):
        _sub(owner, f"{{{OWNER_NS}}}tag", metadata[key], key=key)
    return owner


def parse_owner_metadata(xml: str | ET.Element) -> dict[str, str]:
    """The owner tags in a domain/network XML or a bare ``<rv:owner>`` element ({} if none).

    A bare element may come without its namespace: that is how libvirt's metadata API returns
    it. Only for XML produced by us or libvirtd (no DOCTYPE, so no entity expansion to fear).
    """
    root = ET.fromstring(xml) if isinstance(xml, str) else xml  # noqa: S314
    owner_tag = f"{{{OWNER_NS}}}owner"
    if root.tag in (owner_tag, "owner"):
        owner: ET.Element | None = root
    else:
        owner = root.find(f"./metadata/{owner_tag}")
    if owner is None:
        return {}
    namespace = owner.tag[: -len("owner")]  # "{...}" or ""
    return {tag.get("key", ""): tag.text or "" for tag in owner.findall(f"{namespace}tag")}


def build_domain_xml(spec: DomainSpec, *, uuid: str | None = None) -> str:
    """The libvirt domain XML for ``spec``; ``uuid`` keeps an existing domain's identity."""
    return ET.tostring(build_domain_element(spec, uuid=uuid), encoding="unicode")


def build_domain_element(spec: DomainSpec, *, uuid: str | None = None) -> ET.Element:
    """The ``<domain>`` element for ``spec`` (see :func:`build_domain_xml`)."""
    domain = ET.Element("domain", type=spec.domain_type)
    _sub(domain, "name", spec.name)
    if uuid is not None:
        _sub(domain, "uuid", uuid)
    if spec.title is not None:
        _sub(domain, "title", spec.title)
    if spec.description is not None:
        _sub(domain, "description", spec.description)
    _sub(domain, "metadata").append(owner_metadata_element(spec.metadata))
    memory_kib = str(-(-spec.memory_bytes // 1024))
    _sub(domain, "memory", memory_kib, unit="KiB")
    _sub(domain, "currentMemory", memory_kib, unit="KiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    _add_os(domain, spec)
    _add_platform(domain, spec)
    devices = _sub(domain, "devices")
    _add_disks(devices, spec)
    _add_controllers(devices, spec)
    _add_nics(devices, spec.nics)
    _add_console_devices(devices, spec)
    _add_misc_devices(devices)
    if spec.mgmt is not None:
        domain.append(_mgmt_commandline(spec))
    return domain


def _add_os(domain: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    if spec.efi is not None:
        secure = "yes" if spec.efi.secure_boot else "no"
        _sub(os_el, "loader", str(spec.efi.loader), readonly="yes", type="pflash", secure=secure)
        nvram = _sub(os_el, "nvram", str(spec.efi.nvram))
        if spec.efi.nvram_template is not None:
            nvram.set("template", str(spec.efi.nvram_template))
    if not any(disk.boot_order is not None for disk in spec.disks):
        # libvirt forbids mixing <os><boot> with per-device boot orders.
        _sub(os_el, "boot", dev="hd")


def _add_platform(domain: ET.Element, spec: DomainSpec) -> None:
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.efi is not None and spec.efi.secure_boot:
        _sub(features, "smm", state="on")  # OVMF secure boot needs SMM
    if spec.domain_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough", check="none", migratable="on")
        clock = _sub(domain, "clock", offset="utc")
        _sub(clock, "timer", name="rtc", tickpolicy="catchup")
        _sub(clock, "timer", name="pit", tickpolicy="delay")
        _sub(clock, "timer", name="hpet", present="no")
    else:
        # TCG: host-passthrough is KVM-only; 'maximum' is everything TCG can emulate
        # (x86-64-v2 and more, which newer distributions require), and no KVM timer tweaks.
        _sub(domain, "cpu", mode="maximum", check="none", migratable="on")
        _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    pm = _sub(domain, "pm")
    _sub(pm, "suspend-to-mem", enabled="no")  # a sleeping guest looks dead to SSH and VNC
    _sub(pm, "suspend-to-disk", enabled="no")


def _add_disks(devices: ET.Element, spec: DomainSpec) -> None:
    virtio_slots = iter(PCI_SLOTS_VIRTIO_DISKS)
    for disk, target in zip(spec.disks, disk_targets(spec.disks), strict=True):
        element = _sub(devices, "disk", type="file", device=disk.device)
        driver = _sub(element, "driver", name="qemu", type=disk.format)
        if disk.device == "disk" and not disk.readonly:
            driver.set("discard", "unmap")  # trimmed blocks shrink the qcow2 (smaller templates)
        _sub(element, "source", file=str(disk.path))
        _sub(element, "target", dev=target, bus=disk.target_bus)
        if disk.readonly or disk.device == "cdrom":
            _sub(element, "readonly")
        if disk.boot_order is not None:
            _sub(element, "boot", order=str(disk.boot_order))
        if disk.target_bus == "virtio":
            _pci_address(element, next(virtio_slots))


def _add_controllers(devices: ET.Element, spec: DomainSpec) -> None:
    buses = {disk.target_bus for disk in spec.disks}
    usb = _sub(devices, "controller", type="usb", index="0", model="qemu-xhci", ports="15")
    _pci_address(usb, PCI_SLOT_USB)
    if "scsi" in buses:
        scsi = _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        _pci_address(scsi, PCI_SLOT_SCSI)
    if "sata" in buses:
        sata = _sub(devices, "controller", type="sata", index="0")
        if spec.is_q35:
            _pci_address(sata, Q35_SATA_SLOT, function=2)
        else:
            _pci_address(sata, PCI_SLOT_SATA)


def _add_nics(devices: ET.Element, nics: Sequence[NicSpec]) -> None:
    for nic, slot in zip(nics, nic_pci_slots(nics), strict=True):
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "mac", address=nic.mac)
        _sub(interface, "source", network=nic.network)
        _sub(interface, "model", type=nic.model)
        _sub(interface, "rom", enabled="no")  # no PXE option ROM: faster boot, no netboot tries
        _pci_address(interface, slot)


def _add_console_devices(devices: ET.Element, spec: DomainSpec) -> None:
    if spec.serial_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(spec.serial_log), append="on")
    else:
        serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    _sub(devices, "input", type="tablet", bus="usb")  # absolute pointer: VNC mouse stays in sync
    graphics = _sub(devices, "graphics", type="vnc")
    if spec.vnc is True:
        graphics.set("autoport", "yes")
        graphics.set("listen", VNC_LISTEN)
        _sub(graphics, "listen", type="address", address=VNC_LISTEN)
    else:
        _sub(graphics, "listen", type="socket", socket=str(spec.vnc))
    video = _sub(devices, "video")
    _sub(video, "model", type="vga", vram="16384", heads="1", primary="yes")
    _pci_address(video, PCI_SLOT_VIDEO)


def _add_guest_agent_channel(devices: ET.Element) -> None:
    """The virtio-serial port qemu-ga listens on; libvirt picks and owns the socket path."""
    controller = _sub(devices, "controller", type="virtio-serial", index="0")
    _pci_address(controller, PCI_SLOT_VIRTIO_SERIAL)
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    _sub(channel, "address", type="virtio-serial", controller="0", bus="0", port="1")


def _add_misc_devices(devices: ET.Element) -> None:
    _add_guest_agent_channel(devices)
    balloon = _sub(devices, "memballoon", model="virtio")
    _pci_address(balloon, PCI_SLOT_BALLOON)
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _pci_address(rng, PCI_SLOT_RNG)


def _mgmt_commandline(spec: DomainSpec) -> ET.Element:
    """``<qemu:commandline>`` adding the management NIC (libvirt 9.0 has no passt backend)."""
    assert spec.mgmt is not None
    mac = spec.mgmt.mac or mgmt_mac_for(spec.name)
    bus = "pcie.0" if spec.is_q35 else "pci.0"
    netdev = (
        f"user,id={MGMT_NETDEV_ID},restrict=on,"
        f"hostfwd=tcp:127.0.0.1:{spec.mgmt.host_port}-:{spec.mgmt.guest_port}"
    )
    device = (
        f"{MGMT_DEVICES[spec.mgmt.model]},netdev={MGMT_NETDEV_ID},bus={bus},"
        f"addr=0x{PCI_SLOT_MGMT:x},mac={mac},romfile="
    )
    commandline = ET.Element(f"{{{QEMU_NS}}}commandline")
    for value in ("-netdev", netdev, "-device", device):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)
    return commandline


def restore_xml(spec: DomainSpec, *, uuid: str, saved_xml: str) -> str:
    """The XML to restore `spec` (domain `uuid`) from a save image whose domain XML is
    `saved_xml`: ours, with the addresses libvirt gave at the saved guest's start to the
    devices ours leaves unaddressed (the USB ports of the tablet and of USB disks), so that
    libvirt's ABI check finds the machine it saved. Nothing else is taken from the save."""
    ours = build_domain_element(spec, uuid=uuid)
    saved = ET.fromstring(saved_xml)  # noqa: S314 - libvirtd's own XML, from our save file
    addresses = {
        _device_key(device, ordinal): address
        for device, ordinal in _devices(saved)
        if (address := device.find("address")) is not None
    }
    for device, ordinal in _devices(ours):
        found = addresses.get(_device_key(device, ordinal))
        if device.find("address") is None and found is not None:
            device.append(found)
    return ET.tostring(ours, encoding="unicode")


def _devices(domain: ET.Element) -> list[tuple[ET.Element, int]]:
    """Each device with its ordinal among the devices of its tag, type and bus."""
    seen: dict[tuple[str, str, str], int] = {}
    found = []
    for device in domain.iterfind("devices/*"):
        kind = (device.tag, device.get("type", ""), device.get("bus", ""))
        seen[kind] = seen.get(kind, -1) + 1
        found.append((device, seen[kind]))
    return found


def _device_key(device: ET.Element, ordinal: int) -> tuple[str, ...]:
    """What identifies a device across two XMLs of one machine: a disk by its target, a NIC
    by its MAC, the rest by tag, type, bus and order."""
    target, mac = device.find("target"), device.find("mac")
    if device.tag == "disk" and target is not None:
        return ("disk", target.get("dev", ""))
    if device.tag == "interface" and mac is not None:
        return ("interface", mac.get("address", ""))
    return (device.tag, device.get("type", ""), device.get("bus", ""), str(ordinal))
