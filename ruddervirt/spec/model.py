"""The typed record of a module version: what its build captured, per VM and for its networks.

Written once, when a build captures a version (ruddervirt.engine.capture), stored as JSON on
the version (``ModuleVersion.spec``), and read by everything that later needs a fact about
the version: template domains, clones, capacity, consoles, the topology picture. Nothing
downstream re-reads the manifest text.

The same :class:`VMSpec` also describes a VM while it is being built; until capture its
disks have no ``path`` and its firmware no ``nvram``. :class:`VersionSpec` only accepts
captured VMs. Disk and NVRAM paths are relative to the storage root (the version can move
with it); firmware files are absolute host paths (the exact files the build booted).

Every record validates itself on construction and raises :class:`SpecError` naming the
field, so a bad record never reaches the hypervisor.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from ruddervirt.hypervisor.specs import DiskBus, DiskFormat, NicModel

SCHEMA_VERSION = 1

FirmwareKind = Literal["bios", "uefi"]
DISK_BUSES = frozenset({"virtio", "scsi", "sata", "usb"})
DISK_FORMATS = frozenset({"qcow2", "raw"})
NIC_MODELS = frozenset({"virtio", "e1000", "e1000e", "rtl8139"})
MACHINES = frozenset({"pc", "q35"})


class SpecError(ValueError):
    """A version spec (or its JSON) is not valid; str() says which field and why."""


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _relative(path: object, what: str) -> PurePosixPath:
    value = PurePosixPath(str(path))
    if value.is_absolute() or str(value) in ("", "."):
        raise SpecError(f"{what} {path!r} must be a path relative to the storage root")
    return value


def _absolute(path: object, what: str) -> PurePosixPath:
    value = PurePosixPath(str(path))
    if not value.is_absolute():
        raise SpecError(f"{what} {path!r} must be an absolute path")
    return value


@dataclass(frozen=True, kw_only=True)
class DiskRecord:
    """One disk of a VM, in boot order: the first disk boots (``boot_order`` 1)."""

    name: str
    bus: DiskBus
    size: int  # bytes (the virtual size)
    format: DiskFormat = "qcow2"
    boot_order: int | None = None
    path: PurePosixPath | None = None  # relative to the storage root; None until captured

    def __post_init__(self) -> None:
        if self.bus not in DISK_BUSES:
            raise SpecError(f"disk {self.name}: bus {self.bus!r} not in {sorted(DISK_BUSES)}")
        if self.format not in DISK_FORMATS:
            raise SpecError(
                f"disk {self.name}: format {self.format!r} not in {sorted(DISK_FORMATS)}"
            )
        if not isinstance(self.size, int) or self.size < 0:
            raise SpecError(f"disk {self.name}: size must be a whole number of bytes")
        if self.boot_order is not None and self.boot_order < 1:
            raise SpecError(f"disk {self.name}: boot_order must be >= 1")
        if self.path is not None:
            _set(self, "path", _relative(self.path, f"disk {self.name} path"))


@dataclass(frozen=True, kw_only=True)
class NicRecord:
    """A NIC on one of the version's subnets, with the MAC and address the build resolved."""

    name: str
    subnet: str
    slot: int | None
    mac: str
    ip: str | None = None  # None on unmanaged subnets and managed ones without DHCP
    static: bool = False
    model: NicModel = "virtio"

    def __post_init__(self) -> None:
        if self.model not in NIC_MODELS:
            raise SpecError(f"NIC {self.name}: model {self.model!r} not in {sorted(NIC_MODELS)}")
        _set(self, "mac", self.mac.lower())
        if self.ip is not None:
            try:
                ipaddress.IPv4Address(self.ip)
            except ValueError as exc:
                raise SpecError(f"NIC {self.name}: ip {self.ip!r} is not an IPv4 address") from exc


@dataclass(frozen=True, kw_only=True)
class MgmtRecord:
    """The management NIC (QEMU user-mode, SSH forwarded from a loopback port). Clones
    keep the build's MAC, so guests see the interfaces they were built with."""

    mac: str

    def __post_init__(self) -> None:
        _set(self, "mac", self.mac.lower())


@dataclass(frozen=True, kw_only=True)
class NvramRecord:
    """The UEFI variable store captured with the disks (boot entries, Secure Boot state)."""

    path: PurePosixPath  # relative to the storage root
    sha256: str | None = None  # of the captured file

    def __post_init__(self) -> None:
        _set(self, "path", _relative(self.path, "nvram path"))


@dataclass(frozen=True, kw_only=True)
class FirmwareRecord:
    """BIOS, or UEFI with the exact OVMF files the build booted and (once captured) the
    NVRAM it left. Secure Boot needs a q35 machine."""

    kind: FirmwareKind = "bios"
    machine: str = "pc"
    secure_boot: bool = False
    loader: PurePosixPath | None = None  # UEFI only: the read-only code flash
    vars_template: PurePosixPath | None = None  # UEFI only: the pristine variable store
    nvram: NvramRecord | None = None  # UEFI only, once captured

    def __post_init__(self) -> None:
        if self.machine not in MACHINES:
            raise SpecError(f"firmware machine {self.machine!r} not in {sorted(MACHINES)}")
        if self.kind == "bios":
            if self.secure_boot or self.loader or self.vars_template or self.nvram:
                raise SpecError("BIOS firmware has no secure_boot, loader, vars_template or nvram")
            return
        if self.kind != "uefi":
            raise SpecError(f"firmware kind {self.kind!r} must be 'bios' or 'uefi'")
        if self.loader is None or self.vars_template is None:
            raise SpecError("UEFI firmware needs its loader and vars_template files")
        _set(self, "loader", _absolute(self.loader, "firmware loader"))
        _set(self, "vars_template", _absolute(self.vars_template, "firmware vars_template"))
        if self.secure_boot and self.machine != "q35":
            raise SpecError("secure boot needs a q35 machine")

    @property
    def uefi(self) -> bool:
        return self.kind == "uefi"


@dataclass(frozen=True, kw_only=True)
class CommunicatorRecord:
    """How the build logged in (what a later generalization or handbuild step reuses)."""

    ssh_username: str = "root"
    ssh_port: int = 22
    shell: str = "bash"


@dataclass(frozen=True, kw_only=True)
class GeneralizationRecord:
    """What the build's generalization did in the guest before its disks were captured.

    ``removed`` lists every item the guest's script removed, in its words (``emptied
    /etc/machine-id``, ``removed /etc/ssh/ssh_host_ed25519_key``, ...). ``host_keys`` and
    ``cloud_init`` say whether SSH host keys and cloud-init's instance state were part of it
    (only for VMs with a seed: cloud-init makes new ones in every clone). A VM whose record
    has no GeneralizationRecord was not generalized: it opted out (``generalize: false``) or
    its version was captured before generalization existed."""

    removed: tuple[str, ...] = ()
    host_keys: bool = False
    cloud_init: bool = False

    def __post_init__(self) -> None:
        _set(self, "removed", tuple(self.removed))
        if not all(isinstance(item, str) for item in self.removed):
            raise SpecError("generalization: removed must be a list of strings")


@dataclass(frozen=True, kw_only=True)
class CloudInitRecord:
    """The VM boots with a NoCloud seed (``cloudInit``); what a clone's own seed needs.

    Clones never read the manifest: their seed is rendered from the VM's NIC records, the
    topology and ``network_data`` (the instructor's own networkData, None when the network
    config is rendered from the NICs). The instructor's userData is not kept on purpose:
    clones are never provisioned again. ``instance_id`` is the build's cloud-init instance,
    kept by every clone of a VM that was not generalized (``generalize: false``: cloud-init
    must not make new host keys there); None: every clone is a new instance."""

    network_data: str | None = None
    instance_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class VMSpec:
    """One VM: CPU, memory, disks, NICs, management NIC, firmware. See the module docstring."""

    name: str
    cpu: int
    memory: int  # bytes
    disks: tuple[DiskRecord, ...]
    nics: tuple[NicRecord, ...] = ()
    mgmt: MgmtRecord
    firmware: FirmwareRecord = field(default_factory=FirmwareRecord)
    invisible: bool = False
    communicator: CommunicatorRecord = field(default_factory=CommunicatorRecord)
    generalization: GeneralizationRecord | None = None  # None: not generalized
    cloud_init: CloudInitRecord | None = None  # None: no seed (an ISO install, a password VM)

    def __post_init__(self) -> None:
        _set(self, "disks", tuple(self.disks))
        _set(self, "nics", tuple(self.nics))
        if not isinstance(self.cpu, int) or self.cpu < 1:
            raise SpecError(f"VM {self.name}: cpu must be a whole number >= 1")
        if not isinstance(self.memory, int) or isinstance(self.memory, bool) or self.memory < 1:
            raise SpecError(f"VM {self.name}: memory must be a whole number of bytes")
        if not self.disks:
            raise SpecError(f"VM {self.name}: at least one disk")
        for what, items in (("disk", self.disks), ("NIC", self.nics)):
            names = [item.name for item in items]
            if len(names) != len(set(names)):
                raise SpecError(f"VM {self.name}: {what} names must be unique")

    @property
    def captured(self) -> bool:
        """Whether every disk (and a UEFI VM's NVRAM) has its captured file."""
        disks = all(disk.path is not None for disk in self.disks)
        return disks and (not self.firmware.uefi or self.firmware.nvram is not None)

    def nic(self, name: str) -> NicRecord:
        return next(n for n in self.nics if n.name == name)


@dataclass(frozen=True, kw_only=True)
class VpcRecord:
    name: str
    internet: bool  # what clones get (the manifest's base value)
    internet_while_building: bool = False  # after buildOverrides


@dataclass(frozen=True, kw_only=True)
class SubnetRecord:
    name: str
    vpc: str
    cidr: str
    dhcp: bool = True
    dns: tuple[str, ...] = ()
    unmanaged: bool = False

    def __post_init__(self) -> None:
        _set(self, "dns", tuple(self.dns))
        try:
            ipaddress.IPv4Network(self.cidr)
        except ValueError as exc:
            raise SpecError(f"subnet {self.name}: cidr {self.cidr!r}: {exc}") from exc

    @property
    def gateway(self) -> str | None:
        """The gateway/DNS address of a managed subnet (its first host), None if unmanaged."""
        if self.unmanaged:
            return None
        return str(ipaddress.IPv4Network(self.cidr).network_address + 1)


@dataclass(frozen=True, kw_only=True)
class TopologyRecord:
    """The resolved networks: VPCs (with internet) and subnets, in manifest order. The NICs'
    addresses are on the VMs' NIC records."""

    vpcs: tuple[VpcRecord, ...]
    subnets: tuple[SubnetRecord, ...]

    def __post_init__(self) -> None:
        _set(self, "vpcs", tuple(self.vpcs))
        _set(self, "subnets", tuple(self.subnets))
        vpcs = {v.name for v in self.vpcs}
        for subnet in self.subnets:
            if subnet.vpc not in vpcs:
                raise SpecError(f"subnet {subnet.name}: no VPC {subnet.vpc!r}")

    def vpc(self, name: str) -> VpcRecord:
        return next(v for v in self.vpcs if v.name == name)

    def subnet(self, name: str) -> SubnetRecord:
        return next(s for s in self.subnets if s.name == name)


@dataclass(frozen=True, kw_only=True)
class VersionSpec:
    """A whole module version: its captured VMs (manifest order) and its topology."""

    vms: tuple[VMSpec, ...]
    topology: TopologyRecord
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _set(self, "vms", tuple(self.vms))
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        if not self.vms:
            raise SpecError("a version has at least one VM")
        names = [vm.name for vm in self.vms]
        if len(names) != len(set(names)):
            raise SpecError("VM names must be unique")
        subnets = {s.name for s in self.topology.subnets}
        for vm in self.vms:
            if not vm.captured:
                raise SpecError(f"VM {vm.name}: its disks (and UEFI NVRAM) are not captured")
            for nic in vm.nics:
                if nic.subnet not in subnets:
                    raise SpecError(f"VM {vm.name} NIC {nic.name}: no subnet {nic.subnet!r}")

    def vm(self, name: str) -> VMSpec:
        found = next((vm for vm in self.vms if vm.name == name), None)
        if found is None:
            raise KeyError(f"the version has no VM {name!r}")
        return found

    def rebased(self, prefix: PurePosixPath | str) -> VersionSpec:
        """The same spec with every disk and NVRAM path put under `prefix` (a capture
        folder's records, once the folder has moved into the storage root)."""
        base = PurePosixPath(str(prefix))

        def vm_under(vm: VMSpec) -> VMSpec:
            disks = tuple(replace(d, path=base / d.path) for d in vm.disks if d.path)
            firmware = vm.firmware
            if firmware.nvram is not None:
                nvram = replace(firmware.nvram, path=base / firmware.nvram.path)
                firmware = replace(firmware, nvram=nvram)
            return replace(vm, disks=disks, firmware=firmware)

        return replace(self, vms=tuple(vm_under(vm) for vm in self.vms))
