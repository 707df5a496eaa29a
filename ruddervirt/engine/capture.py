"""From a parsed manifest to VM records: the build path's only bridge to ruddervirt.spec.

`build_vm_spec` describes a VM as the build boots it (buildOverrides applied, no captured
files yet); `version_spec` writes the version's record once, at capture, from the base
manifest (clones get the base values), the NICs the build resolved and the captured files.
After this, nothing reads the manifest again: templates, clones, capacity, consoles and the
topology picture read the VersionSpec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from ruddervirt.engine import efi
from ruddervirt.engine.topology import NicPlan, random_mac
from ruddervirt.engine.topology import plan as plan_topology
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.specs import EfiSpec
from ruddervirt.spec import (
    CloudInitRecord,
    CommunicatorRecord,
    DiskRecord,
    MgmtRecord,
    NicRecord,
    SubnetRecord,
    TopologyRecord,
    VersionSpec,
    VMSpec,
    VpcRecord,
)


def nic_record(nic: NicPlan) -> NicRecord:
    return NicRecord(
        name=nic.name, subnet=nic.subnet, slot=nic.slot, mac=nic.mac, ip=nic.ip,
        static=nic.static, model=nic.model,
    )  # fmt: skip


def build_vm_spec(vm, nics: Sequence[NicPlan], *, domain: str, efi_spec: EfiSpec | None) -> VMSpec:
    """The record of manifest VM `vm` as the build `domain` boots it: the build's CPU,
    memory and NICs (`nics`, as planned), its firmware; disks without files yet."""
    return VMSpec(
        name=vm.name,
        cpu=vm.resources.cpu,
        memory=vm.resources.memory,
        disks=tuple(
            DiskRecord(
                name=d.name, bus=d.bus, size=max(d.size, 0), boot_order=1 if i == 0 else None
            )
            for i, d in enumerate(vm.disks)
        ),
        nics=tuple(nic_record(n) for n in nics),
        mgmt=MgmtRecord(mac=mgmt_mac_for(domain)),
        firmware=efi.firmware_record(efi_spec),
        invisible=vm.invisible,
        communicator=CommunicatorRecord(
            ssh_username=vm.communicator.ssh_username,
            ssh_port=vm.communicator.ssh_port,
            shell=vm.communicator.shell,
        ),
        cloud_init=cloud_init_record(vm),
    )


def cloud_init_record(vm) -> CloudInitRecord | None:
    """What a clone's seed needs of manifest VM `vm` (None: it has no cloudInit)."""
    if vm.cloud_init is None:
        return None
    return CloudInitRecord(network_data=vm.cloud_init.network_data)


def topology_record(base, built) -> TopologyRecord:
    """The base manifest's VPCs and subnets; `built` (the build's manifest) says which VPCs
    had internet while building."""
    building = {v.name: v.internet for v in built.network.vpcs}
    return TopologyRecord(
        vpcs=tuple(
            VpcRecord(
                name=v.name,
                internet=v.internet,
                internet_while_building=building.get(v.name, v.internet),
            )
            for v in base.network.vpcs
        ),
        subnets=tuple(
            SubnetRecord(
                name=s.name, vpc=s.vpc, cidr=s.cidr, dhcp=s.dhcp, dns=s.dns, unmanaged=s.unmanaged
            )
            for s in base.network.subnets
        ),
    )


def base_nics(base, built: Mapping[str, Sequence[NicPlan]]) -> dict[str, tuple[NicPlan, ...]]:
    """The version's NICs: the base manifest's, each keeping the MAC (and address) it had in
    the build when the build had a NIC of that name; addresses the build did not give are
    planned the way every clone of the version will find them."""
    macs, ips = {}, {}
    for vm in base.vms:
        used = {n.name: n for n in built.get(vm.name, ())}
        for nic in vm.nics:
            had = used.get(nic.name)
            macs[(vm.name, nic.name)] = (nic.mac or (had.mac if had else random_mac())).lower()
            ip = nic.ip or (had.ip if had and had.subnet == nic.subnet else None)
            if ip:
                ips[(vm.name, nic.name)] = ip
    planned = plan_topology(
        base, owner="v", prefix="", allow_internet=False, macs=macs, ips=ips, new_mac=random_mac
    )
    return dict(planned.nics)


def version_spec(
    base, built, vms: Sequence[VMSpec], nics: Mapping[str, Sequence[NicPlan]]
) -> VersionSpec:
    """The version's record: each captured build VM record `vms` (disk and NVRAM paths set)
    with the base manifest's CPU, memory, invisibility and NICs (`nics`: the build's)."""
    resolved = base_nics(base, nics)
    records = []
    for vm in vms:
        base_vm = base.vm(vm.name)
        records.append(
            replace(
                vm,
                cpu=base_vm.resources.cpu,
                memory=base_vm.resources.memory,
                nics=tuple(nic_record(n) for n in resolved[vm.name]),
                invisible=base_vm.invisible,
            )
        )
    return VersionSpec(vms=tuple(records), topology=topology_record(base, built))
