"""Version records for tests: a VersionSpec from a manifest text and a few facts per VM,
the way a build's capture would write it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from ruddervirt.engine.capture import topology_record
from ruddervirt.manifest import parse
from ruddervirt.spec import (
    CommunicatorRecord,
    DiskRecord,
    FirmwareRecord,
    MgmtRecord,
    NicRecord,
    VersionSpec,
    VMSpec,
)

MIB = 1024 * 1024


def vm_record(
    name: str,
    *,
    disks: Sequence[tuple[str, str, int]],
    memory: int = 256 * MIB,
    cpu: int = 1,
    nics: Sequence[Mapping] = (),
    invisible: bool = False,
    mgmt_mac: str = "52:54:00:99:99:99",
    firmware: FirmwareRecord | None = None,
) -> VMSpec:
    """A captured VM: `disks` are (name, path relative to the storage root, size), the
    first one boots; `nics` are NIC dicts as the version stores them."""
    return VMSpec(
        name=name,
        cpu=cpu,
        memory=memory,
        disks=tuple(
            DiskRecord(
                name=disk,
                bus="virtio",
                size=size,
                boot_order=1 if i == 0 else None,
                path=PurePosixPath(path),
            )
            for i, (disk, path, size) in enumerate(disks)
        ),
        nics=tuple(
            NicRecord(
                name=n["name"],
                subnet=n["subnet"],
                slot=n.get("slot"),
                mac=n["mac"],
                ip=n.get("ip"),
                static=bool(n.get("static")),
                model=n.get("model", "virtio"),
            )
            for n in nics
        ),
        mgmt=MgmtRecord(mac=mgmt_mac),
        firmware=firmware or FirmwareRecord(),
        invisible=invisible,
        communicator=CommunicatorRecord(),
    )


def version_of(manifest_text: str, vms: Sequence[VMSpec]) -> VersionSpec:
    """The version of `manifest_text` (its topology) made of the captured `vms`."""
    base = parse(manifest_text)
    return VersionSpec(vms=tuple(vms), topology=topology_record(base, base.for_build()))


def template_disks(version, vm: str | None = None) -> list:
    """The absolute paths of a version's template disks (of `vm`, or of its only VM)."""
    from django.conf import settings

    from ruddervirt.spec import disk_files

    spec = version.version_spec
    record = spec.vm(vm) if vm else spec.vms[0]
    if vm is None and len(spec.vms) != 1:
        raise ValueError("the version has several VMs: say which")
    return list(disk_files(record, settings.RUDDERVIRT_STORAGE_ROOT))
