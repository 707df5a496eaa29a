"""The topology picture: an SVG whose parts are found again by parsing it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modules.topology import SVG_NS, picture_of_manifest, picture_of_version, render_svg
from ruddervirt.engine.capture import topology_record
from ruddervirt.manifest import parse
from ruddervirt.spec import VersionSpec
from tests.specs import vm_record

NS = {"svg": SVG_NS}

LAB = """\
network:
  vpcs: [{name: lab, internet: false}, {name: dmz, internet: true}]
  subnets:
    - {name: lan, vpc: lab, cidr: 10.10.0.0/24, dns: [10.10.0.53]}
    - {name: wire, vpc: lab, cidr: 10.30.0.0/29, unmanaged: true}
    - {name: edge, vpc: dmz, cidr: 10.20.0.0/24}
buildOverrides:
  vpcs: [{name: lab, internet: true}]
vms:
  - name: web
    source: {url: "file:///x.qcow2"}
    resources: {cpu: 2, memory: 512Mi}
    nics:
      - {name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}
      - {name: eth1, subnet: edge, slot: 3}
  - name: client
    source: {url: "file:///x.qcow2"}
    invisible: true
    nics:
      - {name: eth0, subnet: lan, slot: 1, mac: "52:54:00:aa:bb:cc"}
      - {name: eth1, subnet: wire, slot: 2}
"""


def picture(text: str = LAB, built=None) -> ET.Element:
    """The picture of `text` not built yet, or of its version with the `built` NICs (by VM;
    the other VMs as planned)."""
    manifest = parse(text)
    if built is None:
        return ET.fromstring(render_svg(picture_of_manifest(manifest), title="lab@1"))
    return ET.fromstring(render_svg(picture_of_version(version(manifest, built)), title="lab@1"))


def version(manifest, built) -> VersionSpec:
    """The version a build of `manifest` would record, with the `built` NICs recorded."""
    planned = picture_of_manifest(manifest)
    vms = []
    for vm in manifest.vms:
        nics = built.get(vm.name) or [
            {"name": n.name, "subnet": n.subnet, "slot": n.slot, "ip": n.ip,
             "mac": n.mac or "52:54:00:00:00:ff", "static": n.static}
            for n in planned.nics if n.vm == vm.name
        ]  # fmt: skip
        vms.append(
            vm_record(
                vm.name, cpu=vm.resources.cpu, memory=vm.resources.memory,
                disks=[("root", f"modules/lab/v1/{vm.name}/root.qcow2", 1 << 30)],
                nics=nics, invisible=vm.invisible,
            )
        )  # fmt: skip
    return VersionSpec(vms=tuple(vms), topology=topology_record(manifest, manifest.for_build()))


def groups(root: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{{{SVG_NS}}}g") if g.get("class") == kind]


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{{{SVG_NS}}}text")]


def test_the_picture_is_an_svg_with_a_title() -> None:
    root = picture()
    assert root.tag == f"{{{SVG_NS}}}svg"
    assert root.find("svg:title", NS).text == "lab@1"  # type: ignore[union-attr]
    assert int(root.get("width", "0")) > 0 and int(root.get("height", "0")) > 0


def test_vpcs_show_whether_they_have_internet() -> None:
    vpcs = {g.get("data-name"): g for g in groups(picture(), "vpc")}
    assert set(vpcs) == {"lab", "dmz"}
    assert vpcs["lab"].get("data-internet") == "false"
    assert "no internet (internet while building)" in texts(vpcs["lab"])
    assert vpcs["dmz"].get("data-internet") == "true"


def test_subnets_sit_in_their_vpc_with_cidr_gateway_and_dhcp() -> None:
    vpcs = {g.get("data-name"): g for g in groups(picture(), "vpc")}
    lab = {g.get("data-name"): g for g in groups(vpcs["lab"], "subnet")}
    assert set(lab) == {"lan", "wire"}
    assert lab["lan"].get("data-cidr") == "10.10.0.0/24"
    assert "gw 10.10.0.1 · DHCP · dns 10.10.0.53" in texts(lab["lan"])
    assert lab["wire"].get("data-managed") == "false"
    assert "unmanaged: no DHCP, DNS or gateway" in texts(lab["wire"])
    assert [g.get("data-name") for g in groups(vpcs["dmz"], "subnet")] == ["edge"]


def test_every_vm_has_its_nics_with_addresses_planned_before_the_build() -> None:
    root = picture()
    vms = {g.get("data-name"): g for g in groups(root, "vm")}
    assert set(vms) == {"web", "client"}
    assert "2 vCPU · 512 MiB" in texts(vms["web"])
    assert "1 vCPU · 1024 MiB · invisible" in texts(vms["client"])
    nics = {(g.get("data-vm"), g.get("data-name")): g for g in groups(root, "nic")}
    assert nics["web", "eth0"].get("data-ip") == "10.10.0.10"
    assert "eth0  10.10.0.10 (static)" in texts(nics["web", "eth0"])
    assert nics["web", "eth1"].get("data-ip") == "10.20.0.254"  # from the top of edge
    assert nics["client", "eth0"].get("data-mac") == "52:54:00:aa:bb:cc"  # declared
    assert nics["web", "eth0"].get("data-mac") == ""  # not built: the build makes it
    assert "MAC set by the build · slot 1" in texts(nics["web", "eth0"])
    assert (
        nics["client", "eth1"].get("data-ip") == ""
        and nics["client", "eth1"].get("data-slot") == "2"
    )


def test_a_built_module_shows_the_recorded_macs_and_addresses() -> None:
    built = {
        "web": [
            {
                "name": "eth0",
                "subnet": "lan",
                "slot": 1,
                "mac": "52:54:00:01:02:03",
                "ip": "10.10.0.10",
            },
            {
                "name": "eth1",
                "subnet": "edge",
                "slot": 3,
                "mac": "52:54:00:01:02:04",
                "ip": "10.20.0.254",
            },
        ]
    }
    nics = {(g.get("data-vm"), g.get("data-name")): g for g in groups(picture(built=built), "nic")}
    assert nics["web", "eth0"].get("data-mac") == "52:54:00:01:02:03"
    assert "52:54:00:01:02:04 · slot 3" in texts(nics["web", "eth1"])


def test_the_default_topology_is_one_vpc_with_internet_and_one_subnet() -> None:
    root = picture('vms: [{name: solo, source: {url: "file:///x.qcow2"}}]\n')
    [vpc] = groups(root, "vpc")
    assert vpc.get("data-name") == "default" and vpc.get("data-internet") == "true"
    [subnet] = groups(root, "subnet")
    assert subnet.get("data-cidr") == "10.77.0.0/24"
    [nic] = groups(root, "nic")
    assert nic.get("data-ip") == "10.77.0.254"


def test_names_are_escaped_not_markup() -> None:
    svg = render_svg(picture_of_manifest(parse(LAB)), title='<script>alert("x")</script>')
    assert "<script>" not in svg
    assert ET.fromstring(svg) is not None
