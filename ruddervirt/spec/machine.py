"""Every domain RudderVirt defines comes from one VM record through :func:`machine_spec`.

The record (:class:`~ruddervirt.spec.model.VMSpec`) says what the machine is: CPU, memory,
disk buses and boot order, NIC models, slots and MACs, the management NIC's MAC, firmware.
The :class:`Placement` says where this copy of it lives: its name, its disk files, the
libvirt network of each NIC, its own NVRAM, its SSH port. The role decides the rest:

* ``build``: the VM being built; its working disks, the installer media after them, a
  fresh NVRAM that libvirt makes from the firmware's pristine variables;
* ``template``: the halted domain of a version; its own captured disks and NVRAM, no
  management NIC (it is never started);
* ``clone``: a copy for a student; its overlays, and its own copy of the captured NVRAM
  (the boot entries and Secure Boot state the build left), with the build's loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ruddervirt.hypervisor.specs import (
    DiskSpec,
    DomainSpec,
    DomainType,
    EfiSpec,
    MgmtForward,
    NicModel,
    NicSpec,
)
from ruddervirt.spec.model import SpecError, VMSpec


class Role(StrEnum):
    BUILD = "build"
    TEMPLATE = "template"
    CLONE = "clone"


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where one domain of a VM record lives. ``disks`` are the domain's own files, one per
    record disk (None: the record's captured files, for templates). ``networks`` maps NIC
    names to libvirt networks. ``nvram`` is the domain's own variable store (build: fresh;
    clone: its copy of the captured one; template: None, it points at the captured one).
    ``media`` (builds only) are CD-ROMs and floppies attached after the disks; ``seed`` (builds
    and clones) is the NoCloud seed's drive, attached last."""

    name: str
    domain_type: DomainType
    storage_root: Path
    disks: tuple[Path, ...] | None = None
    networks: Mapping[str, str] = field(default_factory=dict)
    nvram: Path | None = None
    mgmt_port: int | None = None
    media: tuple[DiskSpec, ...] = ()
    seed: DiskSpec | None = None
    serial_log: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    title: str | None = None


def machine_spec(vm: VMSpec, role: Role | str, where: Placement) -> DomainSpec:
    """The DomainSpec of `vm` in `role` at `where`; SpecError when they do not fit."""
    role = Role(role)
    _check(vm, role, where)
    return DomainSpec(
        name=where.name,
        vcpus=vm.cpu,
        memory_bytes=vm.memory,
        domain_type=where.domain_type,
        disks=(*_disks(vm, where), *where.media, *((where.seed,) if where.seed else ())),
        nics=tuple(
            NicSpec(mac=n.mac, network=where.networks[n.name], model=n.model, pci_slot=n.slot)
            for n in vm.nics
        ),
        mgmt=_mgmt(vm, role, where),
        efi=_efi(vm, role, where),
        machine=vm.firmware.machine,
        serial_log=where.serial_log,
        metadata=where.metadata,
        title=where.title,
    )


def disk_files(vm: VMSpec, storage_root: Path) -> tuple[Path, ...]:
    """The absolute paths of a captured VM's disks."""
    return tuple(storage_root / str(d.path) for d in vm.disks if d.path is not None)


def nvram_file(vm: VMSpec, storage_root: Path) -> Path | None:
    """The absolute path of a captured UEFI VM's NVRAM (None for BIOS)."""
    nvram = vm.firmware.nvram
    return None if nvram is None else storage_root / str(nvram.path)


def _check(vm: VMSpec, role: Role, where: Placement) -> None:
    if role is Role.TEMPLATE:
        if where.mgmt_port is not None or where.nvram is not None or where.disks is not None:
            raise SpecError("a template domain uses its captured disks and NVRAM, and no port")
        if not vm.captured:
            raise SpecError(f"VM {vm.name} is not captured: it has no template")
    else:
        if where.mgmt_port is None:
            raise SpecError(f"a {role} domain needs a management port")
        if where.disks is None or len(where.disks) != len(vm.disks):
            raise SpecError(f"a {role} domain needs one disk file per disk of VM {vm.name}")
        if vm.firmware.uefi and where.nvram is None:
            raise SpecError(f"a UEFI {role} domain needs an NVRAM file of its own")
    if role is Role.CLONE:
        if not vm.captured:
            raise SpecError(f"VM {vm.name} is not captured: it cannot be cloned")
        if vm.firmware.uefi and where.nvram == nvram_file(vm, where.storage_root):
            raise SpecError("a clone must not boot from the template's own NVRAM: copy it")
    if where.media and role is not Role.BUILD:
        raise SpecError("only build domains carry installer media")
    if where.seed is not None and role is Role.TEMPLATE:
        raise SpecError("a template domain has no seed: it is never started")
    missing = [n.name for n in vm.nics if n.name not in where.networks]
    if missing:
        raise SpecError(f"VM {vm.name}: no network for NIC(s) {', '.join(missing)}")


def _disks(vm: VMSpec, where: Placement) -> tuple[DiskSpec, ...]:
    files = where.disks if where.disks is not None else disk_files(vm, where.storage_root)
    return tuple(
        DiskSpec(path=path, target_bus=disk.bus, format=disk.format, boot_order=disk.boot_order)
        for disk, path in zip(vm.disks, files, strict=True)
    )


def _mgmt(vm: VMSpec, role: Role, where: Placement) -> MgmtForward | None:
    if role is Role.TEMPLATE:
        return None  # never started
    if where.mgmt_port is None:  # _check said so already
        raise SpecError(f"a {role} domain needs a management port")
    return MgmtForward(
        host_port=where.mgmt_port,
        mac=vm.mgmt.mac,
        guest_port=vm.communicator.ssh_port,
        model=mgmt_model(vm),
    )


def mgmt_model(vm: VMSpec) -> NicModel:
    """The management NIC's card: the model of the VM's first NIC, so a guest without
    virtio drivers (a Windows install on e1000) can use it too; virtio when it has none."""
    return vm.nics[0].model if vm.nics else "virtio"


def _efi(vm: VMSpec, role: Role, where: Placement) -> EfiSpec | None:
    firmware = vm.firmware
    if not firmware.uefi:
        return None
    nvram = nvram_file(vm, where.storage_root) if role is Role.TEMPLATE else where.nvram
    if nvram is None:  # _check said so already
        raise SpecError(f"VM {vm.name}: a UEFI {role} domain needs an NVRAM file")
    return EfiSpec(
        loader=Path(str(firmware.loader)),
        nvram=nvram,
        secure_boot=firmware.secure_boot,
        nvram_template=Path(str(firmware.vars_template)),
    )
