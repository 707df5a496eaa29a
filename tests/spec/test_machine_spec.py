"""machine_spec: every domain (build VM, template, clone) from one VM record, read back
from the libvirt XML it becomes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest

from ruddervirt.hypervisor.domain_xml import build_domain_xml
from ruddervirt.hypervisor.seed import seed_drive
from ruddervirt.hypervisor.specs import DiskSpec
from ruddervirt.spec import (
    CommunicatorRecord,
    FirmwareRecord,
    NvramRecord,
    Placement,
    Role,
    SpecError,
    machine_spec,
)
from tests.domainxml import mgmt_args, options
from tests.specs import vm_record

ROOT = Path("/srv/rv")
OVMF = PurePosixPath("/usr/share/OVMF")
UEFI = FirmwareRecord(
    kind="uefi", machine="q35", secure_boot=True, loader=OVMF / "OVMF_CODE_4M.secboot.fd",
    vars_template=OVMF / "OVMF_VARS_4M.ms.fd",
    nvram=NvramRecord(path=PurePosixPath("modules/lab/v1/web/nvram.fd")),
)  # fmt: skip
WEB = vm_record(
    "web", cpu=2, memory=768 << 20, firmware=UEFI, mgmt_mac="52:54:00:99:99:01",
    disks=[("root", "modules/lab/v1/web/root.qcow2", 1 << 30),
           ("data", "modules/lab/v1/web/data.qcow2", 8 << 20)],
    nics=[{"name": "eth0", "subnet": "lan", "slot": 3, "mac": "52:54:00:0a:00:01",
           "ip": "10.10.0.10", "model": "e1000"}],
)  # fmt: skip
CAPTURED = ROOT / "modules/lab/v1/web/nvram.fd"
CDROM = DiskSpec(path=ROOT / "a.iso", target_bus="sata", format="raw", device="cdrom")
BIOS = vm_record("dc", disks=[("root", "modules/lab/v1/dc/root.qcow2", 1 << 30)])


def placed(role: Role, **changes) -> Placement:
    folder = ROOT / "clones/7/web"
    where = {
        Role.BUILD: dict(disks=(ROOT / "b/web/disk0.qcow2", ROOT / "b/web/disk1.qcow2"),
                         nvram=ROOT / "b/web/nvram.fd", mgmt_port=40001),
        Role.TEMPLATE: {},
        Role.CLONE: dict(disks=(folder / "disk0-root.qcow2", folder / "disk1-data.qcow2"),
                         nvram=folder / "efivars.fd", mgmt_port=40002),
    }[role]  # fmt: skip
    values = dict(
        name=f"rvt-{role}-web", domain_type="qemu", storage_root=ROOT,
        networks={"eth0": f"rvt-{role}-lan"}, metadata={"kind": str(role)}, **where,
    )  # fmt: skip
    return Placement(**{**values, **changes})


def xml_of(role: Role, vm=WEB, **changes) -> ET.Element:
    return ET.fromstring(build_domain_xml(machine_spec(vm, role, placed(role, **changes))))


@pytest.mark.parametrize("role", list(Role))
def test_every_role_gets_the_same_machine(role):
    root = xml_of(role)
    assert root.findtext("memory") == str(768 << 10) and root.find("memory").get("unit") == "KiB"
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("os/loader").text == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert root.find("os/loader").get("secure") == "yes"
    assert root.find("os/nvram").get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert root.find("features/smm").get("state") == "on"
    disks = root.findall("devices/disk[@device='disk']")
    assert [d.find("target").get("bus") for d in disks] == ["virtio", "virtio"]
    assert [d.find("boot").get("order") if d.find("boot") is not None else None for d in disks] == [
        "1",
        None,
    ]
    [nic] = root.findall("devices/interface[@type='network']")
    assert nic.find("mac").get("address") == "52:54:00:0a:00:01"
    assert nic.find("model").get("type") == "e1000"
    assert nic.find("source").get("network") == f"rvt-{role}-lan"


def test_a_build_vm_boots_its_working_disks_a_fresh_nvram_and_its_media():
    iso = DiskSpec(path=ROOT / "cache/isos/a.iso", target_bus="sata", format="raw",
                   device="cdrom", readonly=True, boot_order=2)  # fmt: skip
    root = xml_of(Role.BUILD, media=(iso,))
    sources = [d.find("source").get("file") for d in root.findall("devices/disk")]
    assert sources == [
        f"{ROOT}/b/web/disk0.qcow2",
        f"{ROOT}/b/web/disk1.qcow2",
        f"{ROOT}/cache/isos/a.iso",
    ]
    assert root.findtext("os/nvram") == f"{ROOT}/b/web/nvram.fd"
    assert "hostfwd=tcp:127.0.0.1:40001-:22" in build_domain_xml(
        machine_spec(WEB, Role.BUILD, placed(Role.BUILD))
    )


def test_a_template_points_at_its_captured_disks_and_nvram_and_has_no_management_nic():
    root = xml_of(Role.TEMPLATE)
    sources = [d.find("source").get("file") for d in root.findall("devices/disk")]
    assert sources == [
        f"{ROOT}/modules/lab/v1/web/root.qcow2",
        f"{ROOT}/modules/lab/v1/web/data.qcow2",
    ]
    assert root.findtext("os/nvram") == f"{ROOT}/modules/lab/v1/web/nvram.fd"
    assert "hostfwd" not in ET.tostring(root, encoding="unicode")


def test_a_clone_boots_its_own_copy_of_the_captured_nvram_with_the_builds_loader():
    spec = machine_spec(WEB, Role.CLONE, placed(Role.CLONE))
    root = ET.fromstring(build_domain_xml(spec))
    assert root.findtext("os/nvram") == f"{ROOT}/clones/7/web/efivars.fd"
    assert root.findtext("os/loader") == str(UEFI.loader)  # the build's, not another path
    assert spec.mgmt.mac == "52:54:00:99:99:01" and spec.mgmt.host_port == 40002
    sources = [d.find("source").get("file") for d in root.findall("devices/disk")]
    assert sources == [
        f"{ROOT}/clones/7/web/disk0-root.qcow2",
        f"{ROOT}/clones/7/web/disk1-data.qcow2",
    ]


def test_a_bios_vm_has_no_firmware_files():
    root = xml_of(Role.CLONE, vm=BIOS, disks=(ROOT / "c/dc.qcow2",), nvram=None, networks={})
    assert root.find("os/loader") is None and root.find("os/nvram") is None
    assert root.find("os/type").get("machine") == "pc"


@pytest.mark.parametrize(
    ("role", "changes", "message"),
    [
        (Role.CLONE, {"nvram": CAPTURED}, "must not boot from the template's own NVRAM"),
        (Role.CLONE, {"nvram": None}, "needs an NVRAM file of its own"),
        (Role.CLONE, {"mgmt_port": None}, "needs a management port"),
        (Role.CLONE, {"disks": (ROOT / "one.qcow2",)}, "one disk file per disk"),
        (Role.CLONE, {"networks": {}}, "no network for NIC"),
        (Role.TEMPLATE, {"mgmt_port": 40003}, "no port"),
        (Role.CLONE, {"media": (CDROM,)}, "only build"),
    ],
)  # fmt: skip
def test_a_placement_that_does_not_fit_the_role_is_refused(role, changes, message):
    with pytest.raises(SpecError, match=message):
        machine_spec(WEB, role, placed(role, **changes))


def _mgmt_of(root: ET.Element) -> tuple[str, str]:
    """(hostfwd, device) of a domain's management NIC."""
    args = mgmt_args(root)
    return options(args[1])["hostfwd"], args[3].split(",")[0]


@pytest.mark.parametrize("role", [Role.BUILD, Role.CLONE])
def test_the_management_nic_forwards_the_vms_ssh_port_on_the_card_of_its_nics(role):
    vm = replace(WEB, communicator=CommunicatorRecord(ssh_port=2222))
    hostfwd, device = _mgmt_of(xml_of(role, vm))
    assert hostfwd.endswith("-:2222") and device == "e1000"  # WEB's NIC is an e1000


def test_a_vm_without_nics_gets_a_virtio_management_nic_on_port_22():
    hostfwd, device = _mgmt_of(
        xml_of(Role.CLONE, BIOS, networks={}, disks=(ROOT / "c/root.qcow2",), nvram=None)
    )
    assert hostfwd.endswith("-:22") and device == "virtio-net-pci"


def test_a_clone_carries_its_own_seed_drive_last_and_a_template_none():
    seed = seed_drive(ROOT / "clones/7/web/seed.iso")
    root = xml_of(Role.CLONE, seed=seed)
    [cdrom] = root.findall("devices/disk[@device='cdrom']")
    assert cdrom.find("source").get("file") == f"{ROOT}/clones/7/web/seed.iso"
    assert cdrom.find("target").get("bus") == "scsi" and cdrom.find("readonly") is not None
    assert root.findall("devices/disk")[-1] is cdrom
    with pytest.raises(SpecError, match="a template domain has no seed"):
        machine_spec(WEB, Role.TEMPLATE, placed(Role.TEMPLATE, seed=seed))
