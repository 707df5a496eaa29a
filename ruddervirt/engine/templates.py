"""Halted template domains: the libvirt face of a module version.

They are never started; clones are made from their disks. Defining them makes a version
visible to `virsh list --all` and to libvirt tooling, the way instructors expect.
"""

from __future__ import annotations

from collections.abc import Sequence

from ruddervirt.engine.config import EngineConfig
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.hypervisor.specs import DomainSpec
from ruddervirt.spec import Placement, Role, VersionSpec, VMSpec, machine_spec


def version_key(module_id: int, number: int) -> str:
    """The key of version `number` of module `module_id` in its template domains' names."""
    return f"m{module_id}v{number}"


def template_domain_name(config: EngineConfig, key: str, vm: str) -> str:
    return f"{config.name_prefix}tpl-{key}-{vm}"[:80]


def template_network_name(config: EngineConfig, key: str, subnet: str) -> str:
    return f"{config.name_prefix}tpl-{key}-{subnet}"[:80]


def template_spec(config: EngineConfig, key: str, vm: VMSpec, *, title: str) -> DomainSpec:
    """The template domain of `vm`: its captured disks and, for UEFI, its captured NVRAM
    itself (never started, so never written; clones boot from copies of it)."""
    where = Placement(
        name=template_domain_name(config, key, vm.name),
        domain_type=config.domain_type,
        storage_root=config.storage_root,
        networks={n.name: template_network_name(config, key, n.subnet) for n in vm.nics},
        metadata={"kind": "template", "version": key, "vm": vm.name},
        title=title,
    )
    return machine_spec(vm, Role.TEMPLATE, where)


def define_templates(
    hv: Hypervisor, config: EngineConfig, *, key: str, label: str, spec: VersionSpec
) -> list[str]:
    """Define one halted domain per VM; returns their names. On error, removes what it made."""
    names: list[str] = []
    try:
        for vm in spec.vms:
            domain = template_spec(config, key, vm, title=f"{label} {vm.name} (template)")
            hv.define(domain)
            names.append(domain.name)
    except Exception:
        remove_templates(hv, names)
        raise
    return names


def remove_templates(hv: Hypervisor, names: Sequence[str]) -> None:
    for name in names:
        # The NVRAM belongs to the version's files, not to the domain: keep it.
        hv.undefine(name, remove_nvram=False)
