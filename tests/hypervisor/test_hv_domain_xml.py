"""Domain XML, checked by parsing it back (never by comparing strings)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ruddervirt.hypervisor.domain_xml import (
    OWNER_NS,
    QEMU_NS,
    build_domain_xml,
    mgmt_mac_for,
    nic_pci_slots,
    parse_owner_metadata,
)
from ruddervirt.hypervisor.seed import seed_drive
from ruddervirt.hypervisor.specs import (
    DiskSpec,
    DomainSpec,
    EfiSpec,
    MgmtForward,
    NicSpec,
)
from tests.domainxml import mgmt_args, options

MIB = 1024 * 1024
ROOT_DISK = DiskSpec(path="/var/lib/rv/root.qcow2", target_bus="virtio")


def nic(n: int, slot: int | None = None, network: str = "rv-lan") -> NicSpec:
    return NicSpec(mac=f"52:54:00:00:00:{n:02x}", network=network, pci_slot=slot)


def spec(**overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": "rv-b1-web",
        "vcpus": 2,
        "memory_bytes": 512 * MIB,
        "domain_type": "qemu",
        "disks": (ROOT_DISK,),
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def parse(domain: DomainSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(domain))


def pci_slot(element: ET.Element) -> int:
    address = element.find("address[@type='pci']")
    assert address is not None, ET.tostring(element)
    assert address.get("bus") == "0x00"
    return int(address.get("slot", ""), 16)


def nic_slots_by_mac(root: ET.Element) -> dict[str, int]:
    return {
        iface.find("mac").get("address"): pci_slot(iface)  # type: ignore[union-attr]
        for iface in root.findall("./devices/interface")
    }


def non_nic_slots(root: ET.Element) -> dict[str, int]:
    """Slot of every PCI device except NICs, keyed by a stable description."""
    slots = {}
    for device in root.find("devices"):  # type: ignore[union-attr]
        if device.tag == "interface" or device.find("address[@type='pci']") is None:
            continue
        target = device.find("target")
        key = device.tag + ":" + (target.get("dev", "") if target is not None else "")
        key += ":" + device.get("type", "")
        slots[key] = pci_slot(device)
    return slots


# -- NIC slots -------------------------------------------------------------------------------


def test_manifest_slot_n_maps_to_pci_slot_0x10_plus_n() -> None:
    root = parse(spec(nics=[nic(1, slot=1), nic(2, slot=5), nic(3, slot=9)]))
    assert nic_slots_by_mac(root) == {
        "52:54:00:00:00:01": 0x11,
        "52:54:00:00:00:02": 0x15,
        "52:54:00:00:00:03": 0x19,
    }


def test_guest_nic_order_follows_slots_not_declaration_order() -> None:
    root = parse(spec(nics=[nic(1, slot=3), nic(2, slot=1)]))
    in_pci_order = sorted(nic_slots_by_mac(root).items(), key=lambda item: item[1])
    assert [mac for mac, _ in in_pci_order] == ["52:54:00:00:00:02", "52:54:00:00:00:01"]


def test_nics_without_slot_follow_the_highest_pinned_one_in_declaration_order() -> None:
    nics = [nic(1), nic(2, slot=2), nic(3), nic(4, slot=4)]
    assert nic_pci_slots(nics) == [0x15, 0x12, 0x16, 0x14]


def test_nics_without_any_slot_take_consecutive_slots_like_slots_1_2_3() -> None:
    assert nic_pci_slots([nic(1), nic(2), nic(3)]) == [0x11, 0x12, 0x13]


def test_unpinned_nics_wrap_below_the_highest_pin_when_slots_run_out() -> None:
    nics = [nic(9, slot=9), *[nic(i) for i in range(1, 7)]]
    assert nic_pci_slots(nics) == [0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x11, 0x12]


def test_nic_slot_plan_is_deterministic() -> None:
    nics = [nic(1), nic(2, slot=4), nic(3)]
    assert build_domain_xml(spec(nics=nics)) == build_domain_xml(spec(nics=nics))


def test_every_pci_device_has_an_explicit_address_and_no_two_share_one() -> None:
    disks = (
        ROOT_DISK,
        DiskSpec(path="/d/data.qcow2", target_bus="virtio"),
        DiskSpec(path="/d/scsi.qcow2", target_bus="scsi"),
        DiskSpec(path="/d/install.iso", target_bus="sata", device="cdrom", format="raw"),
    )
    root = parse(spec(disks=disks, nics=[nic(1, slot=1), nic(2)]))
    devices = root.find("devices")
    assert devices is not None
    pci_devices = [
        *[d for d in devices.findall("disk") if d.find("target[@bus='virtio']") is not None],
        *devices.findall("controller"),
        *devices.findall("interface"),
        *devices.findall("video"),
        *devices.findall("memballoon"),
        *devices.findall("rng"),
    ]
    slots = [pci_slot(device) for device in pci_devices]
    # 2 disks, 4 controllers (usb, scsi, sata, virtio-serial), 2 NICs, video, balloon, rng
    assert len(slots) == len(set(slots)) == 11
    assert 0x01 not in slots  # i440fx ISA bridge
    assert 0x1E not in slots  # management NIC


@pytest.mark.parametrize(
    "domain",
    [
        spec(),
        spec(machine="q35", domain_type="kvm"),
        spec(mgmt=MgmtForward(host_port=2222), nics=[nic(1, slot=1)]),
    ],
    ids=["plain", "q35 kvm", "with NICs and management forward"],
)
def test_every_domain_has_a_guest_agent_channel_on_a_socket_libvirt_manages(
    domain: DomainSpec,
) -> None:
    root = parse(domain)
    [channel] = root.findall("./devices/channel")
    assert channel.get("type") == "unix"
    assert channel.find("target").attrib == {  # type: ignore[union-attr]
        "type": "virtio",
        "name": "org.qemu.guest_agent.0",
    }
    assert channel.find("source").attrib == {"mode": "bind"}  # type: ignore[union-attr]
    address = channel.find("address")
    assert address is not None and address.attrib == {
        "type": "virtio-serial",
        "controller": "0",
        "bus": "0",
        "port": "1",
    }
    [controller] = root.findall("./devices/controller[@type='virtio-serial']")
    assert controller.get("index") == "0"
    assert pci_slot(controller) == 0x10  # not the video card's slot 2, nor a disk's or NIC's


def test_the_guest_agent_controller_keeps_its_slot_with_all_virtio_disks_and_nics() -> None:
    disks = tuple(DiskSpec(path=f"/d/{n}.qcow2", target_bus="virtio") for n in range(8))
    root = parse(spec(disks=disks, nics=[nic(n) for n in range(1, 14)]))
    slots = [pci_slot(d) for d in root.iter() if d.find("address[@type='pci']") is not None]
    assert len(slots) == len(set(slots))
    assert pci_slot(root.find("./devices/controller[@type='virtio-serial']")) == 0x10  # type: ignore[arg-type]


def test_the_seed_drive_is_a_readonly_virtio_scsi_cdrom_a_cloud_kernel_can_see() -> None:
    root = parse(spec(disks=(ROOT_DISK, seed_drive(Path("/d/seed.iso")))))
    [cdrom] = root.findall("./devices/disk[@device='cdrom']")
    assert cdrom.find("target").attrib == {"dev": "sda", "bus": "scsi"}  # type: ignore[union-attr]
    assert cdrom.find("source").get("file") == "/d/seed.iso"  # type: ignore[union-attr]
    assert cdrom.find("readonly") is not None
    [scsi] = root.findall("./devices/controller[@type='scsi']")
    assert scsi.get("model") == "virtio-scsi" and pci_slot(scsi) == 0x04
    assert root.find("./devices/controller[@type='sata']") is None  # no AHCI needed


def test_adding_nics_never_moves_another_device() -> None:
    one = non_nic_slots(parse(spec(nics=[nic(1, slot=1)])))
    three = non_nic_slots(parse(spec(nics=[nic(1, slot=1), nic(2), nic(3, slot=7)])))
    assert one == three
    assert one["video::"] == 0x02


def test_adding_a_disk_does_not_move_nics() -> None:
    nics = [nic(1, slot=1), nic(2)]
    before = nic_slots_by_mac(parse(spec(nics=nics)))
    more_disks = (ROOT_DISK, DiskSpec(path="/d/x.qcow2", target_bus="virtio"))
    assert nic_slots_by_mac(parse(spec(nics=nics, disks=more_disks))) == before


def test_nic_uses_its_network_model_and_no_option_rom() -> None:
    root = parse(spec(nics=[NicSpec(mac="52:54:00:00:00:01", network="rv-x", model="e1000")]))
    iface = root.find("./devices/interface[@type='network']")
    assert iface is not None
    assert iface.find("source").get("network") == "rv-x"  # type: ignore[union-attr]
    assert iface.find("model").get("type") == "e1000"  # type: ignore[union-attr]
    assert iface.find("rom").get("enabled") == "no"  # type: ignore[union-attr]


# -- management NIC --------------------------------------------------------------------------


def test_management_forward_is_user_mode_with_restrict_on_and_loopback_hostfwd() -> None:
    root = parse(spec(mgmt=MgmtForward(host_port=22022)))
    args = mgmt_args(root)
    assert args[0::2] == ["-netdev", "-device"]
    netdev = options(args[1])
    assert "user" in netdev
    assert netdev["restrict"] == "on"
    assert netdev["hostfwd"] == "tcp:127.0.0.1:22022-:22"
    device = options(args[3])
    assert "virtio-net-pci" in device
    assert device["netdev"] == netdev["id"]
    assert device["addr"] == "0x1e"
    assert device["bus"] == "pci.0"
    assert device["mac"] == mgmt_mac_for("rv-b1-web")


def test_management_nic_uses_given_mac_and_pcie_bus_on_q35() -> None:
    mgmt = MgmtForward(host_port=22022, mac="52:54:00:AA:BB:CC")
    device = options(mgmt_args(parse(spec(mgmt=mgmt, machine="q35")))[3])
    assert device["mac"] == "52:54:00:aa:bb:cc"
    assert device["bus"] == "pcie.0"


def test_no_qemu_commandline_without_management_forward() -> None:
    assert parse(spec()).find(f"{{{QEMU_NS}}}commandline") is None


def test_management_mac_is_stable_and_unicast() -> None:
    mac = mgmt_mac_for("rv-b1-web")
    assert mac == mgmt_mac_for("rv-b1-web") != mgmt_mac_for("rv-b1-db")
    assert mac.startswith("52:54:00:")


# -- console, platform, lifecycle ------------------------------------------------------------


def test_vnc_listens_on_loopback_with_autoport() -> None:
    graphics = parse(spec()).find("./devices/graphics")
    assert graphics is not None
    assert graphics.get("type") == "vnc"
    assert graphics.get("autoport") == "yes"
    assert graphics.get("listen") == "127.0.0.1"
    listens = graphics.findall("listen")
    assert [(x.get("type"), x.get("address")) for x in listens] == [("address", "127.0.0.1")]


def test_vnc_can_listen_on_a_unix_socket_instead() -> None:
    graphics = parse(spec(vnc=Path("/run/rv/vnc.sock"))).find("./devices/graphics")
    assert graphics is not None
    assert graphics.get("listen") is None and graphics.get("port") is None
    listen = graphics.find("listen")
    assert listen is not None
    assert (listen.get("type"), listen.get("socket")) == ("socket", "/run/rv/vnc.sock")


def test_serial_console_is_logged_to_the_given_file() -> None:
    serial = parse(spec(serial_log="/var/log/rv/b1-web.log")).find("./devices/serial")
    assert serial is not None
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/var/log/rv/b1-web.log"  # type: ignore[union-attr]


def test_vga_video_lifecycle_actions_features_and_clock() -> None:
    root = parse(spec())
    assert root.find("./devices/video/model").get("type") == "vga"  # type: ignore[union-attr]
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.find("./features/acpi") is not None
    assert root.find("./features/apic") is not None
    assert root.find("clock").get("offset") == "utc"  # type: ignore[union-attr]


def test_qemu_domain_uses_tcg_safe_cpu_and_kvm_uses_host_passthrough() -> None:
    tcg = parse(spec(domain_type="qemu"))
    assert tcg.get("type") == "qemu"
    assert tcg.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    assert tcg.find("clock/timer") is None
    kvm = parse(spec(domain_type="kvm"))
    assert kvm.get("type") == "kvm"
    assert kvm.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_memory_is_rounded_up_to_whole_kib_and_vcpus_set() -> None:
    root = parse(spec(memory_bytes=512 * MIB + 1))
    assert root.find("memory").get("unit") == "KiB"  # type: ignore[union-attr]
    assert root.findtext("memory") == str(512 * 1024 + 1)
    assert root.findtext("vcpu") == "2"


def test_disk_targets_formats_and_readonly_cdrom() -> None:
    disks = (
        ROOT_DISK,
        DiskSpec(path="/d/seed.iso", target_bus="sata", device="cdrom", format="raw"),
        DiskSpec(path="/d/data.qcow2", target_bus="virtio"),
        DiskSpec(path="/d/usb.qcow2", target_bus="usb", readonly=True),
    )
    found = [
        (
            d.find("target").get("dev"),  # type: ignore[union-attr]
            d.find("target").get("bus"),  # type: ignore[union-attr]
            d.find("driver").get("type"),  # type: ignore[union-attr]
            d.find("readonly") is not None,
            d.find("source").get("file"),  # type: ignore[union-attr]
        )
        for d in parse(spec(disks=disks)).findall("./devices/disk")
    ]
    assert found == [
        ("vda", "virtio", "qcow2", False, "/var/lib/rv/root.qcow2"),
        ("sda", "sata", "raw", True, "/d/seed.iso"),
        ("vdb", "virtio", "qcow2", False, "/d/data.qcow2"),
        ("sdb", "usb", "qcow2", True, "/d/usb.qcow2"),
    ]


def test_boot_order_per_device_replaces_os_boot() -> None:
    plain = parse(spec())
    assert plain.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    disks = (
        DiskSpec(path="/d/root.qcow2", target_bus="virtio", boot_order=2),
        DiskSpec(path="/d/in.iso", target_bus="sata", device="cdrom", format="raw", boot_order=1),
    )
    ordered = parse(spec(disks=disks))
    assert ordered.find("./os/boot") is None
    orders = [d.find("boot").get("order") for d in ordered.findall("./devices/disk")]  # type: ignore[union-attr]
    assert orders == ["2", "1"]


def test_efi_loader_nvram_and_secure_boot_smm() -> None:
    efi = EfiSpec(
        loader="/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        nvram="/var/lib/rv/vars.fd",
        secure_boot=True,
        nvram_template="/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
    )
    root = parse(spec(efi=efi, machine="q35"))
    loader = root.find("./os/loader")
    assert loader is not None
    assert loader.text == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert (loader.get("type"), loader.get("secure"), loader.get("readonly")) == (
        "pflash",
        "yes",
        "yes",
    )
    nvram = root.find("./os/nvram")
    assert nvram is not None
    assert nvram.text == "/var/lib/rv/vars.fd"
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert root.find("./features/smm").get("state") == "on"  # type: ignore[union-attr]
    assert root.find("./os/type").get("machine") == "q35"  # type: ignore[union-attr]


def test_bios_domain_has_no_loader() -> None:
    assert parse(spec()).find("./os/loader") is None


# -- metadata --------------------------------------------------------------------------------


def test_owner_metadata_round_trips_through_the_domain_xml() -> None:
    tags = {"kind": "build", "build_id": "42", "vm": "web"}
    root = parse(spec(metadata=tags))
    owner = root.find(f"./metadata/{{{OWNER_NS}}}owner")
    assert owner is not None
    assert parse_owner_metadata(build_domain_xml(spec(metadata=tags))) == tags


def test_owner_metadata_parses_the_bare_element_libvirt_returns() -> None:
    # virDomainGetMetadata gives the element back without its namespace.
    bare = '<owner>\n  <tag key="clone_id">7</tag>\n  <tag key="kind">clone</tag>\n</owner>'
    assert parse_owner_metadata(bare) == {"clone_id": "7", "kind": "clone"}


def test_domain_without_owner_metadata_parses_as_empty() -> None:
    assert parse_owner_metadata("<domain><name>x</name></domain>") == {}


def test_uuid_is_included_only_when_given() -> None:
    assert parse(spec()).find("uuid") is None
    uuid = "4e12568f-7144-4726-b867-ab746c7c644a"
    root = ET.fromstring(build_domain_xml(spec(), uuid=uuid))
    assert root.findtext("uuid") == uuid


@pytest.mark.parametrize("machine, sata_slot", [("pc", 0x05), ("q35", 0x1F)])
def test_sata_controller_address_depends_on_the_machine(machine: str, sata_slot: int) -> None:
    disks = (ROOT_DISK, DiskSpec(path="/d/i.iso", target_bus="sata", device="cdrom", format="raw"))
    root = parse(spec(disks=disks, machine=machine))
    controller = root.find("./devices/controller[@type='sata']")
    assert controller is not None
    assert pci_slot(controller) == sata_slot


def test_the_management_forward_reaches_the_guests_ssh_port_on_the_card_asked_for() -> None:
    args = mgmt_args(parse(spec(mgmt=MgmtForward(host_port=22022, guest_port=2222, model="e1000"))))
    assert options(args[1])["hostfwd"] == "tcp:127.0.0.1:22022-:2222"
    device = options(args[3])
    assert "e1000" in device and "virtio-net-pci" not in device


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"guest_port": 0}, "guest_port 0"), ({"model": "ne2k_pci"}, "model 'ne2k_pci'")],
)
def test_a_management_forward_out_of_range_is_refused(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        MgmtForward(host_port=22022, **changes)
