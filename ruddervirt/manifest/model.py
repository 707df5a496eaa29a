"""The validated manifest as frozen dataclasses, with every default applied.

Durations are seconds (float), sizes are bytes (int), `cpu` is whole vCPUs. Collections are
tuples; nothing here is a raw dict (cloud-init `userData`/`networkData` stay text). Field
names are the manifest's keys in snake_case. See defaults.py for the default values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from ipaddress import IPv4Network
from typing import ClassVar, Literal

from ruddervirt.manifest import defaults


@dataclass(frozen=True)
class File:
    """A `files` entry: exactly one of `inline` / `url`; checksum is `sha256:<hex>` or None."""

    name: str
    inline: str | None = None
    url: str | None = None
    checksum: str | None = None


@dataclass(frozen=True)
class Vpc:
    name: str
    internet: bool


@dataclass(frozen=True)
class Subnet:
    name: str
    vpc: str
    cidr: str  # e.g. "10.10.0.0/24" (host bits zero)
    dhcp: bool = defaults.SUBNET_DHCP
    dns: tuple[str, ...] = ()
    unmanaged: bool = False

    @property
    def gateway(self) -> str | None:
        """The gateway/DNS address of a managed subnet (its first host), None if unmanaged."""
        if self.unmanaged:
            return None
        return str(IPv4Network(self.cidr).network_address + 1)


@dataclass(frozen=True)
class Network:
    vpcs: tuple[Vpc, ...]
    subnets: tuple[Subnet, ...]

    def vpc(self, name: str) -> Vpc:
        return next(v for v in self.vpcs if v.name == name)

    def subnet(self, name: str) -> Subnet:
        return next(s for s in self.subnets if s.name == name)


@dataclass(frozen=True)
class BuildRef:
    """`source.buildRef`: `module` (the module name), `version` from `name@version`."""

    module: str
    version: int | None = None
    vm_name: str | None = None


@dataclass(frozen=True)
class Source:
    """Exactly one kind: `url` (+ optional checksum), `blank`, or `buildRef`."""

    kind: Literal["url", "blank", "buildRef"]
    url: str | None = None
    checksum: str | None = None
    build_ref: BuildRef | None = None


@dataclass(frozen=True)
class Resources:
    cpu: int  # vCPUs
    memory: int  # bytes


@dataclass(frozen=True)
class Disk:
    name: str
    size: int  # bytes
    bus: Literal["virtio", "scsi", "sata", "usb"] = defaults.DISK_BUS


@dataclass(frozen=True)
class Communicator:
    type: Literal["ssh"] = defaults.COMMUNICATOR_TYPE
    shell: Literal["bash", "powershell"] = defaults.SHELL
    ssh_username: str = defaults.SSH_USERNAME
    ssh_port: int = defaults.SSH_PORT
    ssh_password: str | None = None
    ssh_timeout: float = defaults.SSH_TIMEOUT_SECONDS
    ssh_private_key_file: str | None = None  # a `files` name


@dataclass(frozen=True)
class CloudInit:
    user_data: str | None = None
    network_data: str | None = None


@dataclass(frozen=True)
class Nic:
    name: str
    subnet: str
    slot: int  # PCI slot 1-9; when not written, assigned as convert._nics documents
    ip: str | None = None  # static address, else DHCP
    mac: str | None = None  # lowercase
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] = defaults.NIC_MODEL


@dataclass(frozen=True)
class EfiFirmware:
    secure_boot: bool = False


@dataclass(frozen=True)
class Iso:
    url: str
    checksum: str | None = None  # always `sha256:<hex>` (a bare hex is prefixed)


@dataclass(frozen=True)
class Step:
    """Common to every provisioner step. `type` is the manifest's step type."""

    type: ClassVar[str]
    name: str  # defaults to "<type>-<position>", e.g. "shell-2"
    step_timeout: float | None  # seconds; None = bounded by the build timeout only


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str


@dataclass(frozen=True)
class ShellStep(Step):
    """Exactly one of `inline` / `script_file` (a `files` name, from scriptFrom.fileRef)."""

    type: ClassVar[str] = "shell"
    inline: str | None = None
    script_file: str | None = None
    env: tuple[EnvVar, ...] = ()
    execute_command: str | None = None  # contains {{ .Command }}


@dataclass(frozen=True)
class FileStep(Step):
    type: ClassVar[str] = "file"
    file_ref: str = ""
    destination: str = ""


@dataclass(frozen=True)
class RebootStep(Step):
    type: ClassVar[str] = "reboot"
    command: str = defaults.REBOOT_COMMAND["bash"]  # powershell guests: shutdown /r /f /t 0


@dataclass(frozen=True)
class WindowsUpdateStep(Step):
    type: ClassVar[str] = "windows-update"
    search_criteria: str = defaults.WINDOWS_UPDATE_SEARCH
    filters: tuple[str, ...] = defaults.WINDOWS_UPDATE_FILTERS
    update_limit: int = defaults.WINDOWS_UPDATE_LIMIT


@dataclass(frozen=True)
class HandbuildStep(Step):
    type: ClassVar[str] = "handbuild"
    instructions: str = ""


AnyStep = ShellStep | FileStep | RebootStep | WindowsUpdateStep | HandbuildStep


@dataclass(frozen=True)
class Vm:
    name: str
    source: Source
    resources: Resources
    disks: tuple[Disk, ...]  # the first is the boot disk
    communicator: Communicator
    cloud_init: CloudInit | None  # None: no seed disk
    nics: tuple[Nic, ...]
    boot_command: tuple[str, ...] = ()
    efi_firmware: EfiFirmware | None = None  # None: BIOS
    isos: tuple[Iso, ...] = ()
    floppy_files: tuple[str, ...] = ()  # `files` names
    provisioners: tuple[AnyStep, ...] = ()
    invisible: bool = False
    # (ours) False: the template keeps the build's identity (no generalization at capture).
    generalize: bool = True
    # (ours) How the build stops the VM before capturing its disks: "fast" (sync and freeze
    # its file systems, then stop it) or "graceful" (the guest's own shutdown). None: the
    # default for its shell (fast for bash guests, graceful for PowerShell ones).
    shutdown: str | None = None

    @property
    def shutdown_mode(self) -> str:
        if self.shutdown is not None:
            return self.shutdown
        return "graceful" if self.communicator.shell == "powershell" else "fast"


@dataclass(frozen=True)
class VpcOverride:
    name: str
    internet: bool | None = None  # None: keep the base value


@dataclass(frozen=True)
class SubnetOverride:
    name: str
    unmanaged: bool | None = None


@dataclass(frozen=True)
class VmOverride:
    name: str
    cpu: int | None = None
    memory: int | None = None
    nics: tuple[Nic, ...] | None = None  # None: keep the base NICs


@dataclass(frozen=True)
class BuildOverrides:
    vpcs: tuple[VpcOverride, ...] = ()
    subnets: tuple[SubnetOverride, ...] = ()
    vms: tuple[VmOverride, ...] = ()


@dataclass(frozen=True)
class Manifest:
    vms: tuple[Vm, ...]
    files: tuple[File, ...]
    network: Network
    http_files: tuple[str, ...] = ()  # httpDirectory.files names
    build_overrides: BuildOverrides = field(default_factory=BuildOverrides)
    timeout: float = defaults.TIMEOUT_SECONDS
    retries: int = defaults.RETRIES
    iso_cache_ttl: float = defaults.ISO_CACHE_TTL_SECONDS
    # (ours) `stepCache.reuseOutside`: cache steps whose result depends on the outside too
    # (engine.stepkey: internet on, a url file without checksum, handbuild, windows-update).
    reuse_outside: bool = False

    def vm(self, name: str) -> Vm:
        return next(v for v in self.vms if v.name == name)

    def file(self, name: str) -> File:
        return next(f for f in self.files if f.name == name)

    def for_build(self) -> Manifest:
        """This manifest as the build sees it: `buildOverrides` applied (VPC internet, subnet
        unmanaged, VM resources and NICs) and then cleared. `self` keeps the base values,
        which are what clones get."""
        overrides = self.build_overrides
        internet = {o.name: o.internet for o in overrides.vpcs if o.internet is not None}
        unmanaged = {o.name: o.unmanaged for o in overrides.subnets if o.unmanaged is not None}
        vms = {o.name: o for o in overrides.vms}
        network = Network(
            tuple(replace(v, internet=internet.get(v.name, v.internet)) for v in self.network.vpcs),
            tuple(
                replace(s, unmanaged=unmanaged.get(s.name, s.unmanaged))
                for s in self.network.subnets
            ),
        )
        return replace(
            self,
            network=network,
            vms=tuple(_overridden(vm, vms.get(vm.name)) for vm in self.vms),
            build_overrides=BuildOverrides(),
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready nested dicts/lists (snake_case keys; steps carry their `type`)."""
        return _jsonable(self)  # type: ignore[return-value]


def _overridden(vm: Vm, override: VmOverride | None) -> Vm:
    if override is None:
        return vm
    resources = Resources(
        cpu=vm.resources.cpu if override.cpu is None else override.cpu,
        memory=vm.resources.memory if override.memory is None else override.memory,
    )
    nics = vm.nics if override.nics is None else override.nics
    return replace(vm, resources=resources, nics=nics)


def _jsonable(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        result: dict[str, object] = {}
        if isinstance(value, Step):
            result["type"] = value.type
        for f in fields(value):
            result[f.name] = _jsonable(getattr(value, f.name))
        return result
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value
