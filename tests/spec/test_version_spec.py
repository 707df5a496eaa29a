"""The version record: one JSON form, read back strictly."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import PurePosixPath

import pytest

from ruddervirt.spec import (
    SCHEMA_VERSION,
    CloudInitRecord,
    DiskRecord,
    FirmwareRecord,
    GeneralizationRecord,
    NvramRecord,
    SpecError,
    VersionSpec,
    dump_spec,
    load_spec,
)
from tests.specs import version_of, vm_record

MANIFEST = """\
network:
  vpcs: [{name: lab, internet: false}]
  subnets:
    - {name: lan, vpc: lab, cidr: 10.10.0.0/24, dns: [10.10.0.53]}
    - {name: wire, vpc: lab, cidr: 10.30.0.0/29, unmanaged: true}
buildOverrides:
  vpcs: [{name: lab, internet: true}]
vms:
  - name: web
    source: {url: "file:///x.qcow2"}
    efiFirmware: {secureBoot: true}
    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}]
  - name: dc
    source: {url: "file:///x.qcow2"}
    nics: [{name: eth0, subnet: lan, slot: 2}, {name: eth1, subnet: wire, slot: 3}]
"""
SECURE = FirmwareRecord(
    kind="uefi", machine="q35", secure_boot=True,
    loader=PurePosixPath("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
    vars_template=PurePosixPath("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    nvram=NvramRecord(path=PurePosixPath("modules/lab/v1/web/nvram.fd"), sha256="ab" * 32),
)  # fmt: skip


def lab() -> VersionSpec:
    web = vm_record(
        "web", memory=512 << 20, cpu=2, firmware=SECURE,
        disks=[("root", "modules/lab/v1/web/root.qcow2", 1 << 30),
               ("data", "modules/lab/v1/web/data.qcow2", 8 << 20)],
        nics=[{"name": "eth0", "subnet": "lan", "slot": 1, "mac": "52:54:00:0a:00:01",
               "ip": "10.10.0.10", "static": True}],
    )  # fmt: skip
    dc = vm_record(
        "dc", invisible=True, disks=[("root", "modules/lab/v1/dc/root.qcow2", 1 << 30)],
        nics=[{"name": "eth0", "subnet": "lan", "slot": 2, "mac": "52:54:00:0a:00:02",
               "ip": "10.10.0.254"},
              {"name": "eth1", "subnet": "wire", "slot": 3, "mac": "52:54:00:0a:00:03"}],
    )  # fmt: skip
    return version_of(MANIFEST, [web, dc])


def test_a_version_survives_its_json_form_unchanged():
    spec = lab()
    data = json.loads(json.dumps(dump_spec(spec)))  # what a JSONField stores and gives back
    assert load_spec(data) == spec
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["vms"][0]["memory"] == 512 << 20  # bytes, a number: never text
    assert data["vms"][0]["disks"][0]["path"] == "modules/lab/v1/web/root.qcow2"
    assert data["vms"][0]["firmware"]["loader"] == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert data["vms"][0]["generalization"] is None  # issue 14 fills it


GENERALIZED = GeneralizationRecord(
    removed=("emptied /etc/machine-id", "removed /etc/ssh/ssh_host_ed25519_key"),
    host_keys=True,
    cloud_init=True,
)
NETWORK_DATA = "version: 2\nethernets: {eth0: {dhcp4: true}}\n"


def generalized_lab() -> VersionSpec:
    web, dc = lab().vms
    web = replace(web, generalization=GENERALIZED, cloud_init=CloudInitRecord())
    dc = replace(dc, cloud_init=CloudInitRecord(network_data=NETWORK_DATA, instance_id="rv-b7-dc"))
    return replace(lab(), vms=(web, dc))


def test_what_generalization_did_and_the_clone_seed_survive_the_json_form():
    spec = generalized_lab()
    data = json.loads(json.dumps(dump_spec(spec)))
    assert load_spec(data) == spec
    web, dc = data["vms"]
    assert web["generalization"] == {
        "removed": ["emptied /etc/machine-id", "removed /etc/ssh/ssh_host_ed25519_key"],
        "host_keys": True,
        "cloud_init": True,
    }
    assert (web["cloud_init"], dc["cloud_init"]) == (
        {"network_data": None, "instance_id": None},
        {"network_data": NETWORK_DATA, "instance_id": "rv-b7-dc"},
    )
    assert dc["generalization"] is None  # not generalized


def test_a_record_stored_before_generalization_reads_as_not_generalized_without_a_seed():
    data = dump_spec(lab())
    for vm in data["vms"]:
        del vm["cloud_init"]  # written before the key existed
    spec = load_spec(data)
    assert [(vm.generalization, vm.cloud_init) for vm in spec.vms] == [(None, None)] * 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["vms"][0]["generalization"].update(removed=[1]), r"removed: expected a list"),
        (lambda d: d["vms"][0]["generalization"].pop("host_keys"), r"missing host_keys"),
        (lambda d: d["vms"][1]["cloud_init"].update(network_data=2), r"network_data: expected"),
        (lambda d: d["vms"][1].update(cloud_init="yes"), r"vms\[1\]\.cloud_init: expected dict"),
    ],
)  # fmt: skip
def test_a_damaged_generalization_or_seed_record_is_refused_naming_the_place(change, message):
    data = copy.deepcopy(dump_spec(generalized_lab()))
    change(data)
    with pytest.raises(SpecError, match=message):
        load_spec(data)


def test_the_record_keeps_the_resolved_topology_with_internet_as_built_and_as_cloned():
    topology = lab().topology
    [vpc] = topology.vpcs
    assert (vpc.name, vpc.internet, vpc.internet_while_building) == ("lab", False, True)
    lan, wire = topology.subnets
    assert (lan.cidr, lan.gateway, lan.dns, lan.dhcp) == (
        "10.10.0.0/24",
        "10.10.0.1",
        ("10.10.0.53",),
        True,
    )
    assert wire.unmanaged and wire.gateway is None


def test_an_unknown_schema_version_is_refused_with_a_clear_error():
    data = dump_spec(lab())
    for version in (2, 0, None, "1"):
        with pytest.raises(SpecError, match=rf"schema_version {version!r} is not supported"):
            load_spec({**data, "schema_version": version})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["vms"][0].pop("memory"), r"^vms\[0\]: missing memory$"),
        (lambda d: d["vms"][0].update(colour="red"), r"^vms\[0\]: unknown colour$"),
        (lambda d: d["vms"][0].update(memory="512Mi"), r"^vms\[0\]\.memory: expected int"),
        (lambda d: d["vms"][0].update(cpu=True), r"^vms\[0\]\.cpu: expected int"),
        (lambda d: d["vms"][1].update(invisible=1), r"^vms\[1\]\.invisible: expected bool"),
        (lambda d: d["vms"][0]["disks"][1].update(size=-1), r"^vms\[0\]\.disks\[1\]: disk data"),
        (lambda d: d["vms"][0]["disks"][0].update(path="/abs/root.qcow2"), r"relative to the"),
        (lambda d: d["vms"][0]["firmware"].update(machine="pc"), r"secure boot needs a q35"),
        (lambda d: d["vms"][0]["firmware"].update(nvram=None), r"not captured"),
        (lambda d: d["vms"][1]["nics"][0].update(subnet="dmz"), r"no subnet 'dmz'"),
        (lambda d: d["topology"]["subnets"][0].update(cidr="10.10.0.1/33"), r"subnets\[0\]"),
    ],
)  # fmt: skip
def test_a_damaged_record_is_refused_naming_the_place(change, message):
    data = copy.deepcopy(dump_spec(lab()))
    change(data)
    with pytest.raises(SpecError, match=message):
        load_spec(data)


def test_a_version_only_holds_captured_vms():
    web, dc = lab().vms
    building = replace(dc, disks=(DiskRecord(name="root", bus="virtio", size=1, boot_order=1),))
    with pytest.raises(SpecError, match=r"VM dc: its disks .* are not captured"):
        version_of(MANIFEST, [web, building])


def test_rebasing_moves_every_disk_and_nvram_under_the_new_folder():
    spec = load_spec(json.loads(json.dumps(dump_spec(lab())).replace("modules/lab/v1/", "")))
    moved = spec.rebased("modules/lab/v7")
    web = moved.vm("web")
    assert [str(d.path) for d in web.disks] == [
        "modules/lab/v7/web/root.qcow2",
        "modules/lab/v7/web/data.qcow2",
    ]
    assert str(web.firmware.nvram.path) == "modules/lab/v7/web/nvram.fd"
    assert web.firmware.nvram.sha256 == "ab" * 32
    assert moved.vm("dc").firmware.kind == "bios"
