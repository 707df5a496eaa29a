"""Validated manifest data -> model dataclasses, applying every default.

Only called on data that passed the schema and the semantic checks, so it indexes and
converts without re-checking.
"""

from __future__ import annotations

from typing import Any

from ruddervirt.manifest import defaults, units
from ruddervirt.manifest.model import (
    AnyStep,
    BuildOverrides,
    BuildRef,
    CloudInit,
    Communicator,
    Disk,
    EfiFirmware,
    EnvVar,
    File,
    FileStep,
    HandbuildStep,
    Iso,
    Manifest,
    Network,
    Nic,
    RebootStep,
    Resources,
    ShellStep,
    Source,
    Subnet,
    SubnetOverride,
    Vm,
    VmOverride,
    Vpc,
    VpcOverride,
    WindowsUpdateStep,
)

Raw = dict[str, Any]


def to_manifest(data: Raw) -> Manifest:
    network = _network(data.get("network"))
    return Manifest(
        vms=tuple(_vm(vm, network) for vm in data["vms"]),
        files=tuple(_file(f) for f in data.get("files", ())),
        network=network,
        http_files=_names(data.get("httpDirectory", {}).get("files", ())),
        build_overrides=_overrides(data.get("buildOverrides", {}), network),
        timeout=_seconds(data.get("timeout"), defaults.TIMEOUT_SECONDS),
        retries=data.get("retries", defaults.RETRIES),
        iso_cache_ttl=_seconds(data.get("isoCacheTTL"), defaults.ISO_CACHE_TTL_SECONDS),
        reuse_outside=bool(data.get("stepCache", {}).get("reuseOutside", False)),
    )


def _seconds(value: str | int | None, default: float) -> float:
    return default if value is None else units.parse_duration(value)


def _checksum(value: str | None) -> str | None:
    if value is None:
        return None
    return "sha256:" + value.removeprefix("sha256:").lower()


def _names(entries: list[Raw] | tuple[()]) -> tuple[str, ...]:
    return tuple(entry["name"] for entry in entries)


def _file(raw: Raw) -> File:
    return File(raw["name"], raw.get("inline"), raw.get("url"), _checksum(raw.get("checksum")))


def _network(raw: Raw | None) -> Network:
    if raw is None:
        name = defaults.NETWORK_NAME
        return Network(
            (Vpc(name, defaults.DEFAULT_VPC_INTERNET),),
            (Subnet(name, name, defaults.SUBNET_CIDR, defaults.SUBNET_DHCP, (), False),),
        )
    vpcs = tuple(
        Vpc(v["name"], v.get("internet", defaults.DECLARED_VPC_INTERNET)) for v in raw["vpcs"]
    )
    only_vpc = vpcs[0].name if len(vpcs) == 1 else None
    subnets = tuple(
        Subnet(
            name=s["name"],
            vpc=s.get("vpc", only_vpc),
            cidr=s["cidr"],
            dhcp=s.get("dhcp", defaults.SUBNET_DHCP),
            dns=tuple(s.get("dns", ())),
            unmanaged=s.get("unmanaged", False),
        )
        for s in raw["subnets"]
    )
    return Network(vpcs, subnets)


def _vm(raw: Raw, network: Network) -> Vm:
    communicator = _communicator(raw.get("communicator", {}))
    return Vm(
        name=raw["name"],
        source=_source(raw["source"]),
        resources=_resources(raw.get("resources", {})),
        disks=tuple(_disk(d) for d in raw.get("disks", ())) or (_default_disk(),),
        communicator=communicator,
        cloud_init=_cloud_init(raw["cloudInit"]) if "cloudInit" in raw else None,
        nics=_nics(raw["nics"], network) if "nics" in raw else _default_nics(network),
        boot_command=tuple(raw.get("bootCommand", ())),
        efi_firmware=EfiFirmware(raw["efiFirmware"].get("secureBoot", False))
        if "efiFirmware" in raw
        else None,
        isos=tuple(Iso(i["url"], _checksum(i.get("checksum"))) for i in raw.get("isos", ())),
        floppy_files=_names(raw.get("floppy", {}).get("files", ())),
        provisioners=tuple(
            _step(s, i, communicator.shell) for i, s in enumerate(raw.get("provisioners", ()))
        ),
        invisible=raw.get("invisible", False),
        generalize=raw.get("generalize", True),
        shutdown=raw.get("shutdown"),
    )


def _source(raw: Raw) -> Source:
    if "url" in raw:
        return Source("url", url=raw["url"], checksum=_checksum(raw.get("checksum")))
    if "blank" in raw:
        return Source("blank")
    ref = raw["buildRef"]
    module, _, version = ref["name"].partition("@")
    return Source(
        "buildRef", build_ref=BuildRef(module, int(version) if version else None, ref.get("vmName"))
    )


def _resources(raw: Raw) -> Resources:
    cpu = units.vcpus(raw["cpu"]) if "cpu" in raw else defaults.CPU
    memory = units.quantity_bytes(raw["memory"]) if "memory" in raw else defaults.MEMORY_BYTES
    return Resources(cpu, memory)


def _default_disk() -> Disk:
    return Disk(defaults.DISK_NAME, defaults.DISK_SIZE_BYTES, defaults.DISK_BUS)


def _disk(raw: Raw) -> Disk:
    size = units.quantity_bytes(raw["size"]) if "size" in raw else defaults.DISK_SIZE_BYTES
    return Disk(raw["name"], size, raw.get("bus", defaults.DISK_BUS))


def _communicator(raw: Raw) -> Communicator:
    timeout = raw.get("sshTimeout")
    return Communicator(
        type=raw.get("type", defaults.COMMUNICATOR_TYPE),
        shell=raw.get("shell", defaults.SHELL),
        ssh_username=raw.get("sshUsername", defaults.SSH_USERNAME),
        ssh_port=raw.get("sshPort", defaults.SSH_PORT),
        ssh_password=raw.get("sshPassword"),
        ssh_timeout=_seconds(timeout, defaults.SSH_TIMEOUT_SECONDS),
        ssh_private_key_file=raw.get("sshPrivateKeyFile"),
    )


def _cloud_init(raw: Raw) -> CloudInit:
    return CloudInit(raw.get("userData"), raw.get("networkData"))


def _default_nics(network: Network) -> tuple[Nic, ...]:
    return (Nic(defaults.NIC_NAME, network.subnets[0].name, 1),)


def _nics(raw: list[Raw], network: Network) -> tuple[Nic, ...]:
    """NICs with subnets defaulted (the only subnet) and slots assigned. Written slots are
    kept; the others take, in order, the free slots above the highest written one, then the
    free ones below it (the rule of hypervisor/domain_xml.py), so that guests enumerate NICs
    in declaration order where possible and every clone gets the same PCI addresses."""
    taken = {nic["slot"] for nic in raw if "slot" in nic}
    highest = max(taken, default=0)
    order = [*range(highest + 1, 10), *range(1, highest)]
    free = iter(slot for slot in order if slot not in taken)
    return tuple(
        Nic(
            name=nic["name"],
            # Validated: a NIC without `subnet` means the network has exactly one.
            subnet=nic["subnet"] if "subnet" in nic else network.subnets[0].name,
            slot=nic["slot"] if "slot" in nic else next(free),
            ip=nic.get("ip"),
            mac=nic["mac"].lower() if "mac" in nic else None,
            model=nic.get("model", defaults.NIC_MODEL),
        )
        for nic in raw
    )


def _step(raw: Raw, index: int, shell: str) -> AnyStep:
    kind = raw["type"]
    name = raw.get("name", f"{kind}-{index + 1}")
    timeout = _seconds(raw["stepTimeout"], 0) if "stepTimeout" in raw else None
    if kind == "shell":
        block = raw["shell"]
        return ShellStep(
            name,
            timeout,
            inline=block.get("inline"),
            script_file=block.get("scriptFrom", {}).get("fileRef"),
            env=tuple(EnvVar(k, v) for k, v in block.get("env", {}).items()),
            execute_command=block.get("executeCommand"),
        )
    if kind == "file":
        return FileStep(name, timeout, raw["file"]["fileRef"], raw["file"]["destination"])
    if kind == "reboot":
        command = raw.get("reboot", {}).get("command", defaults.REBOOT_COMMAND[shell])
        return RebootStep(name, timeout, command)
    if kind == "windows-update":
        block = raw.get("windowsUpdate", {})
        return WindowsUpdateStep(
            name,
            timeout,
            search_criteria=block.get("searchCriteria", defaults.WINDOWS_UPDATE_SEARCH),
            filters=tuple(block.get("filters", defaults.WINDOWS_UPDATE_FILTERS)),
            update_limit=block.get("updateLimit", defaults.WINDOWS_UPDATE_LIMIT),
        )
    return HandbuildStep(name, timeout, raw["handbuild"]["instructions"])


def _overrides(raw: Raw, network: Network) -> BuildOverrides:
    return BuildOverrides(
        vpcs=tuple(VpcOverride(v["name"], v.get("internet")) for v in raw.get("vpcs", ())),
        subnets=tuple(
            SubnetOverride(s["name"], s.get("unmanaged")) for s in raw.get("subnets", ())
        ),
        vms=tuple(_vm_override(v, network) for v in raw.get("vms", ())),
    )


def _vm_override(raw: Raw, network: Network) -> VmOverride:
    resources = raw.get("resources", {})
    return VmOverride(
        name=raw["name"],
        cpu=units.vcpus(resources["cpu"]) if "cpu" in resources else None,
        memory=units.quantity_bytes(resources["memory"]) if "memory" in resources else None,
        nics=_nics(raw["nics"], network) if "nics" in raw else None,
    )
