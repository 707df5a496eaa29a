"""A module's network topology as an SVG picture, for the instructor to check at a glance.

Pure: :func:`render_svg` takes a :class:`Picture` and returns SVG text built with ElementTree
(so every name and address is escaped). A built version's picture comes from its record
(:func:`picture_of_version`: the MACs and addresses its build resolved), never from its
manifest text; only a revision not built yet is pictured from its parsed manifest
(:func:`picture_of_manifest`). Nothing here touches the database.

Layout: one column per VM, its box at the top; one horizontal lane per subnet, lanes grouped
in a box per VPC (with its internet marker). A VM's line runs down its column; a dot where it
crosses a lane is one NIC, labelled with its name, address, MAC and slot. Groups carry
``class`` and ``data-*`` attributes so tests (and styles) can find VPCs, subnets, VMs, NICs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from ruddervirt.engine.capture import topology_record
from ruddervirt.engine.topology import plan
from ruddervirt.spec import SubnetRecord, VersionSpec, VpcRecord

SVG_NS = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)

MARGIN = 16
LABEL_W = 250  # the subnet labels, left of the VM columns
COLUMN_W = 210
VM_H = 46
VPC_HEAD = 30
LANE_H = 74
GAP = 14
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
COLORS = {
    "vpc": "#f4f6f8",
    "vpc_line": "#b8c2cc",
    "lane": "#1f6feb",
    "bare": "#8a94a0",
    "vm": "#ffffff",
    "text": "#1d2733",
    "muted": "#5b6775",
    "internet": "#2e7d32",
    "closed": "#c62828",
}


@dataclass(frozen=True)
class NicView:
    vm: str
    name: str
    subnet: str
    slot: int | None
    ip: str | None
    mac: str | None  # None: assigned by the build
    static: bool


@dataclass(frozen=True)
class VmView:
    name: str
    cpu: int
    memory: int  # bytes
    invisible: bool


@dataclass(frozen=True)
class Picture:
    """What the picture shows: VPCs and subnets in manifest order, VMs, their NICs."""

    vpcs: tuple[VpcRecord, ...]
    subnets: tuple[SubnetRecord, ...]
    vms: tuple[VmView, ...]
    nics: tuple[NicView, ...]


def picture_of_version(spec: VersionSpec) -> Picture:
    """A built version, from its record: the MACs and addresses its build resolved."""
    return Picture(
        vpcs=spec.topology.vpcs,
        subnets=spec.topology.subnets,
        vms=tuple(VmView(vm.name, vm.cpu, vm.memory, vm.invisible) for vm in spec.vms),
        nics=tuple(
            NicView(vm.name, n.name, n.subnet, n.slot, n.ip, n.mac, n.static)
            for vm in spec.vms
            for n in vm.nics
        ),
    )


def picture_of_manifest(manifest) -> Picture:
    """A revision not built yet (a parsed base manifest): the addresses a build will give
    (static, or the stable address from the top of its subnet); MACs only where declared."""
    counter = iter(range(1, 1 << 24))
    planned = plan(
        manifest,
        owner="p",
        prefix="p-",
        allow_internet=False,
        new_mac=lambda: (
            "52:54:00:" + ":".join(f"{b:02x}" for b in next(counter).to_bytes(3, "big"))
        ),
    )
    topology = topology_record(manifest, manifest.for_build())
    nics = []
    for vm in manifest.vms:
        declared = {n.name: n.mac for n in vm.nics if n.mac}
        for nic in planned.nics[vm.name]:
            mac = declared.get(nic.name)
            nics.append(NicView(vm.name, nic.name, nic.subnet, nic.slot, nic.ip, mac, nic.static))
    return Picture(
        vpcs=topology.vpcs,
        subnets=topology.subnets,
        vms=tuple(
            VmView(vm.name, vm.resources.cpu, vm.resources.memory, vm.invisible)
            for vm in manifest.vms
        ),
        nics=tuple(nics),
    )


def _tag(name: str) -> str:
    return f"{{{SVG_NS}}}{name}"


def _el(parent: ET.Element, name: str, text: str | None = None, **attrs: object) -> ET.Element:
    names = {key: key.rstrip("_").replace("_", "-") for key in attrs}  # class_ -> class
    element = ET.SubElement(parent, _tag(name), {names[k]: str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def render_svg(picture: Picture, *, title: str = "") -> str:
    """The topology picture (see the module docstring) as SVG text."""
    vms = [vm.name for vm in picture.vms]
    lanes, bottom = _lanes(picture)
    width = MARGIN * 2 + LABEL_W + COLUMN_W * len(vms)
    height = bottom + MARGIN - GAP
    root = ET.Element(
        _tag("svg"),
        {
            "width": str(width),
            "height": str(height),
            "viewBox": f"0 0 {width} {height}",
            "role": "img",
            "class": "topology",
            "font-family": FONT,
            "font-size": "12",
        },
    )
    _el(root, "title", title or "Network topology")
    lane_y = {name: y for name, y in lanes}
    _draw_vpcs(root, picture, lane_y, width)
    columns = {name: MARGIN + LABEL_W + COLUMN_W * i + 20 for i, name in enumerate(vms)}
    for vm in picture.vms:
        nics = [n for n in picture.nics if n.vm == vm.name]
        _draw_vm(root, vm, columns[vm.name], nics, lane_y)
    return ET.tostring(root, encoding="unicode")


def _lanes(picture: Picture) -> tuple[list[tuple[str, int]], int]:
    """(subnet, y of its lane), VPC by VPC in manifest order; and the bottom of the last VPC."""
    y = MARGIN + VM_H + GAP * 2
    lanes = []
    for vpc in picture.vpcs:
        y += VPC_HEAD
        for subnet in picture.subnets:
            if subnet.vpc == vpc.name:
                lanes.append((subnet.name, y + LANE_H // 3))
                y += LANE_H
        y += GAP
    return lanes, y


def _internet(vpc: VpcRecord) -> str:
    if vpc.internet:
        return "internet (NAT where the host allows it)"
    return "no internet" + (" (internet while building)" if vpc.internet_while_building else "")


def _draw_vpcs(root: ET.Element, picture: Picture, lane_y: Mapping[str, int], width: int) -> None:
    for vpc in picture.vpcs:
        subnets = [s for s in picture.subnets if s.vpc == vpc.name]
        if not subnets:
            continue
        top = lane_y[subnets[0].name] - LANE_H // 3 - VPC_HEAD
        bottom = lane_y[subnets[-1].name] - LANE_H // 3 + LANE_H
        group = _el(
            root, "g", class_="vpc", data_name=vpc.name, data_internet=str(vpc.internet).lower()
        )
        _el(
            group,
            "rect",
            x=MARGIN,
            y=top,
            width=width - 2 * MARGIN,
            height=bottom - top,
            rx=8,
            fill=COLORS["vpc"],
            stroke=COLORS["vpc_line"],
        )
        _el(group, "text", f"VPC {vpc.name}", x=MARGIN + 10, y=top + 19, font_weight="bold")
        color = COLORS["internet"] if vpc.internet else COLORS["closed"]
        _el(
            group,
            "text",
            _internet(vpc),
            x=MARGIN + 110,
            y=top + 19,
            fill=color,
            class_="internet",
        )
        for subnet in subnets:
            _draw_lane(group, subnet, lane_y[subnet.name], width)


def _subnet_caption(subnet) -> str:
    if subnet.unmanaged:
        return "unmanaged: no DHCP, DNS or gateway"
    parts = [f"gw {subnet.gateway}", "DHCP" if subnet.dhcp else "no DHCP"]
    if subnet.dns:
        parts.append("dns " + ", ".join(subnet.dns))
    return " · ".join(parts)


def _draw_lane(parent: ET.Element, subnet, y: int, width: int) -> None:
    group = _el(
        parent,
        "g",
        class_="subnet",
        data_name=subnet.name,
        data_cidr=subnet.cidr,
        data_managed=str(not subnet.unmanaged).lower(),
    )
    color = COLORS["bare"] if subnet.unmanaged else COLORS["lane"]
    _el(
        group,
        "line",
        x1=MARGIN + LABEL_W - 10,
        y1=y,
        x2=width - MARGIN - 10,
        y2=y,
        stroke=color,
        stroke_width=4,
        stroke_dasharray="8 5" if subnet.unmanaged else "none",
    )
    _el(group, "text", f"{subnet.name}  {subnet.cidr}", x=MARGIN + 10, y=y - 4, font_weight="bold")
    _el(
        group,
        "text",
        _subnet_caption(subnet),
        x=MARGIN + 10,
        y=y + 12,
        fill=COLORS["muted"],
        font_size=11,
    )


def _draw_vm(
    root: ET.Element, vm: VmView, x: int, nics: list[NicView], lane_y: Mapping[str, int]
) -> None:
    group = _el(root, "g", class_="vm", data_name=vm.name)
    box_w = COLUMN_W - 40
    if nics:
        bottom = max(lane_y[n.subnet] for n in nics)
        attached = {n.subnet for n in nics}
        for subnet, y in lane_y.items():
            if subnet not in attached and y < bottom:  # a crossing, not a NIC: break the lane
                _el(group, "rect", x=x + 5, y=y - 4, width=14, height=8, fill=COLORS["vpc"])
        _el(
            group,
            "line",
            x1=x + 12,
            y1=MARGIN + VM_H,
            x2=x + 12,
            y2=bottom,
            stroke=COLORS["text"],
            stroke_width=2,
        )
    _el(
        group,
        "rect",
        x=x,
        y=MARGIN,
        width=box_w,
        height=VM_H,
        rx=6,
        fill=COLORS["vm"],
        stroke=COLORS["text"],
    )
    _el(group, "text", vm.name, x=x + 10, y=MARGIN + 19, font_weight="bold", font_size=14)
    memory = vm.memory // (1024 * 1024)
    details = f"{vm.cpu} vCPU · {memory} MiB" + (" · invisible" if vm.invisible else "")
    _el(group, "text", details, x=x + 10, y=MARGIN + 36, fill=COLORS["muted"], font_size=11)
    for nic in nics:
        _draw_nic(group, nic, x + 12, lane_y[nic.subnet])


def _draw_nic(parent: ET.Element, nic: NicView, x: int, y: int) -> None:
    group = _el(
        parent,
        "g",
        class_="nic",
        data_vm=nic.vm,
        data_name=nic.name,
        data_subnet=nic.subnet,
        data_ip=nic.ip or "",
        data_mac=nic.mac or "",
        data_slot="" if nic.slot is None else nic.slot,
    )
    _el(group, "title", f"{nic.vm} {nic.name} on {nic.subnet}")
    _el(group, "circle", cx=x, cy=y, r=6, fill=COLORS["lane"], stroke="#fff", stroke_width=2)
    address = nic.ip or "no address"
    kind = "static" if nic.static else ("DHCP" if nic.ip else "")
    _el(
        group,
        "text",
        f"{nic.name}  {address}" + (f" ({kind})" if kind else ""),
        x=x + 10,
        y=y - 8,
        font_size=11,
    )
    slot = "" if nic.slot is None else f" · slot {nic.slot}"
    _el(
        group,
        "text",
        (nic.mac or "MAC set by the build") + slot,
        x=x + 10,
        y=y + 20,
        fill=COLORS["muted"],
        font_size=10,
        class_="mac",
    )
