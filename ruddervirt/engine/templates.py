"""Halted template domains: the libvirt face of a module version.

They are never started; clones are made from their disks. Defining them makes a version
visible to `virsh list --all` and to libvirt tooling, the way instructors expect.
"""

from __future__ import annotations

from collections.abc import Sequence

from ruddervirt.engine import efi
from ruddervirt.engine.build import CapturedVM
from ruddervirt.engine.config import EngineConfig
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec, NicSpec


def template_domain_name(config: EngineConfig, key: str, vm: str) -> str:
    return f"{config.name_prefix}tpl-{key}-{vm}"[:80]


def template_network_name(config: EngineConfig, key: str, subnet: str) -> str:
    return f"{config.name_prefix}tpl-{key}-{subnet}"[:80]


def template_spec(config: EngineConfig, key: str, vm: CapturedVM, *, title: str) -> DomainSpec:
    return DomainSpec(
        name=template_domain_name(config, key, vm.name),
        vcpus=vm.cpu,
        memory_bytes=vm.memory,
        domain_type=config.domain_type,
        disks=tuple(
            DiskSpec(path=d.path, target_bus=d.bus, boot_order=1 if i == 0 else None)
            for i, d in enumerate(vm.disks)
        ),
        nics=tuple(
            NicSpec(
                mac=n.mac,
                network=template_network_name(config, key, n.subnet),
                model=n.model,
                pci_slot=n.slot,
            )
            for n in vm.nics
        ),
        # UEFI templates point at the NVRAM captured with their disks (never started, so
        # never written); clones boot from a copy of it (efi.instance_efi).
        efi=efi.template_efi(vm.efi),
        machine=efi.machine_for(vm.efi),
        metadata={"kind": "template", "version": key, "vm": vm.name},
        title=title,
    )


def define_templates(
    hv: Hypervisor, config: EngineConfig, *, key: str, label: str, vms: Sequence[CapturedVM]
) -> list[str]:
    """Define one halted domain per VM; returns their names. On error, removes what it made."""
    names: list[str] = []
    try:
        for vm in vms:
            spec = template_spec(config, key, vm, title=f"{label} {vm.name} (template)")
            hv.define(spec)
            names.append(spec.name)
    except Exception:
        remove_templates(hv, names)
        raise
    return names


def remove_templates(hv: Hypervisor, names: Sequence[str]) -> None:
    for name in names:
        # The NVRAM belongs to the version's files, not to the domain: keep it.
        hv.undefine(name, remove_nvram=False)
