"""The typed record of a module version (:class:`VersionSpec`) and the one way from a VM
record to a domain (:func:`machine_spec`). Django-free; depends only on the hypervisor's
spec types. See model.py for what a version records and machine.py for the roles."""

from __future__ import annotations

from ruddervirt.spec.codec import dump_spec, load_spec, record_json
from ruddervirt.spec.machine import Placement, Role, disk_files, machine_spec, nvram_file
from ruddervirt.spec.model import (
    SCHEMA_VERSION,
    CloudInitRecord,
    CommunicatorRecord,
    DiskRecord,
    FirmwareRecord,
    GeneralizationRecord,
    MgmtRecord,
    NicRecord,
    NvramRecord,
    SpecError,
    SubnetRecord,
    TopologyRecord,
    VersionSpec,
    VMSpec,
    VpcRecord,
)

__all__ = [
    "SCHEMA_VERSION",
    "CloudInitRecord",
    "CommunicatorRecord",
    "DiskRecord",
    "FirmwareRecord",
    "GeneralizationRecord",
    "MgmtRecord",
    "NicRecord",
    "NvramRecord",
    "Placement",
    "Role",
    "SpecError",
    "SubnetRecord",
    "TopologyRecord",
    "VMSpec",
    "VersionSpec",
    "VpcRecord",
    "disk_files",
    "dump_spec",
    "load_spec",
    "machine_spec",
    "nvram_file",
    "record_json",
]
