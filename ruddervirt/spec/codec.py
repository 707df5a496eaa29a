"""The one JSON form of a :class:`~ruddervirt.spec.model.VersionSpec`.

``dump_spec`` gives plain JSON types (what ``ModuleVersion.spec`` stores); ``load_spec`` is strict:
a ``schema_version`` other than this code's is refused (a newer RudderVirt wrote it, or an
older one that no migration converted), and so is a missing or unknown key or a value of
the wrong type. Every error is a SpecError naming the place, e.g. ``vms[0].disks[1].size``.
Keys added after schema_version 1 was first written (``_ADDED``) read as null when a record
stored before them lacks them: such a VM was not generalized and has no clone seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import PurePosixPath
from typing import Any

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

# Per record: its JSON keys, each with the JSON types allowed (None: may be null).
_INT, _STR, _BOOL = (int,), (str,), (bool,)
_KEYS: dict[type, dict[str, tuple]] = {
    DiskRecord: {"name": _STR, "bus": _STR, "size": _INT, "format": _STR,
                 "boot_order": (int, None), "path": (str, None)},
    NicRecord: {"name": _STR, "subnet": _STR, "slot": (int, None), "mac": _STR,
                "ip": (str, None), "static": _BOOL, "model": _STR},
    MgmtRecord: {"mac": _STR},
    NvramRecord: {"path": _STR, "sha256": (str, None)},
    FirmwareRecord: {"kind": _STR, "machine": _STR, "secure_boot": _BOOL,
                     "loader": (str, None), "vars_template": (str, None), "nvram": (dict, None)},
    CommunicatorRecord: {"ssh_username": _STR, "ssh_port": _INT, "shell": _STR},
    VMSpec: {"name": _STR, "cpu": _INT, "memory": _INT, "disks": (list,), "nics": (list,),
             "mgmt": (dict,), "firmware": (dict,), "invisible": _BOOL,
             "communicator": (dict,), "generalization": (dict, None),
             "cloud_init": (dict, None)},
    GeneralizationRecord: {"removed": (list,), "host_keys": _BOOL, "cloud_init": _BOOL},
    CloudInitRecord: {"network_data": (str, None), "instance_id": (str, None)},
    VpcRecord: {"name": _STR, "internet": _BOOL, "internet_while_building": _BOOL},
    SubnetRecord: {"name": _STR, "vpc": _STR, "cidr": _STR, "dhcp": _BOOL, "dns": (list,),
                   "unmanaged": _BOOL},
    TopologyRecord: {"vpcs": (list,), "subnets": (list,)},
    VersionSpec: {"schema_version": _INT, "vms": (list,), "topology": (dict,)},
}  # fmt: skip
# Keys a record written before them lacks (issue 14): missing reads as null.
_ADDED: dict[type, frozenset[str]] = {VMSpec: frozenset({"cloud_init"})}


def dump_spec(spec: VersionSpec) -> dict[str, object]:
    """The JSON form of `spec` (dicts, lists, str, int, bool, None)."""
    return _dump(spec)


def record_json(record: object) -> dict[str, object]:
    """The JSON form of one record of a spec (a NicRecord, a DiskRecord, ...)."""
    if type(record) not in _KEYS:
        raise TypeError(f"{type(record).__name__} is not a version spec record")
    return _dump(record)


def _dump(value: Any) -> Any:
    if type(value) in _KEYS:
        return {f.name: _dump(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    if isinstance(value, PurePosixPath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _dump(v) for k, v in value.items()}
    return value


def load_spec(data: object) -> VersionSpec:
    """The VersionSpec in `data` (the JSON form), or SpecError saying what is wrong."""
    if not isinstance(data, Mapping):
        raise SpecError(f"a version spec is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SpecError(
            f"version spec schema_version {version!r} is not supported: this RudderVirt "
            f"reads schema_version {SCHEMA_VERSION} (was it written by a newer release, "
            f"or missed by a migration?)"
        )
    raw = _checked(VersionSpec, data, "")
    return _build(
        VersionSpec,
        "",
        schema_version=raw["schema_version"],
        vms=tuple(_vm(v, f"vms[{i}]") for i, v in enumerate(raw["vms"])),
        topology=_topology(raw["topology"], "topology"),
    )


def _checked(kind: type, data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where or 'spec'}: expected an object, got {type(data).__name__}")
    keys = _KEYS[kind]
    data = {**dict.fromkeys(_ADDED.get(kind, ())), **data}
    missing = sorted(set(keys) - set(data))
    unknown = sorted(set(data) - set(keys))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise SpecError(f"{where or 'spec'}: {'; '.join(parts)}")
    for key, allowed in keys.items():
        value = data[key]
        if value is None and None in allowed:
            continue
        types = tuple(t for t in allowed if t is not None)
        # bool is an int in Python: never accept one for the other.
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types) + (
                " or null" if None in allowed else ""
            )
            raise SpecError(f"{_at(where, key)}: expected {expected}, got {value!r}")
    return dict(data)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(record: type, where: str, /, **values: Any) -> Any:
    try:
        return record(**values)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}" if where else str(exc)) from exc


def _vm(data: object, where: str) -> VMSpec:
    raw = _checked(VMSpec, data, where)
    disks = [_flat(DiskRecord, d, f"{where}.disks[{i}]") for i, d in enumerate(raw["disks"])]
    nics = [_flat(NicRecord, n, f"{where}.nics[{i}]") for i, n in enumerate(raw["nics"])]
    return _build(
        VMSpec,
        where,
        name=raw["name"],
        cpu=raw["cpu"],
        memory=raw["memory"],
        disks=tuple(disks),
        nics=tuple(nics),
        mgmt=_flat(MgmtRecord, raw["mgmt"], f"{where}.mgmt"),
        firmware=_firmware(raw["firmware"], f"{where}.firmware"),
        invisible=raw["invisible"],
        communicator=_flat(CommunicatorRecord, raw["communicator"], f"{where}.communicator"),
        generalization=_generalization(raw["generalization"], f"{where}.generalization"),
        cloud_init=_optional(CloudInitRecord, raw["cloud_init"], f"{where}.cloud_init"),
    )


def _generalization(data: object, where: str) -> GeneralizationRecord | None:
    if data is None:
        return None
    raw = _checked(GeneralizationRecord, data, where)
    if not all(isinstance(item, str) for item in raw["removed"]):
        raise SpecError(f"{where}.removed: expected a list of strings")
    return _build(GeneralizationRecord, where, **raw)


def _optional(kind: type, data: object, where: str) -> Any:
    return None if data is None else _flat(kind, data, where)


def _flat(kind: type, data: object, where: str) -> Any:
    """A record whose JSON values are its field values as they are."""
    return _build(kind, where, **_checked(kind, data, where))


def _firmware(data: object, where: str) -> FirmwareRecord:
    raw = _checked(FirmwareRecord, data, where)
    nvram = raw.pop("nvram")
    if nvram is not None:
        nvram = _flat(NvramRecord, nvram, f"{where}.nvram")
    return _build(FirmwareRecord, where, nvram=nvram, **raw)


def _topology(data: object, where: str) -> TopologyRecord:
    raw = _checked(TopologyRecord, data, where)
    vpcs = [_flat(VpcRecord, v, f"{where}.vpcs[{i}]") for i, v in enumerate(raw["vpcs"])]
    subnets = []
    for i, item in enumerate(raw["subnets"]):
        subnet = _checked(SubnetRecord, item, f"{where}.subnets[{i}]")
        if not all(isinstance(a, str) for a in subnet["dns"]):
            raise SpecError(f"{where}.subnets[{i}].dns: expected a list of addresses")
        subnets.append(_build(SubnetRecord, f"{where}.subnets[{i}]", **subnet))
    return _build(TopologyRecord, where, vpcs=tuple(vpcs), subnets=tuple(subnets))
