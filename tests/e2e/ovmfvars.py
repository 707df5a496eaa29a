"""Read the variables in an OVMF variable store (an NVRAM file), to check from the host
which UEFI variables a guest's firmware used.

The file is a firmware volume holding an authenticated variable store: a header, then
variables one after another (4-byte aligned), each a 60-byte header (StartId 0x55AA, State,
attributes, monotonic count, time stamp, key index, name size, data size, vendor GUID),
its UTF-16 name and its data. Only variables in the "added" state are live.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

_FV_SIGNATURE = b"_FVH"
_AUTH_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
_HEADER = struct.Struct("<HBBIQ16sIII16s")  # the authenticated variable header, 60 bytes
_START_ID = 0x55AA
_VAR_ADDED = 0x3F


def variables(path: Path) -> dict[str, bytes]:
    """The live variables of the store in `path`, by name (``"MTC"``, ``"Boot0001"``)."""
    data = path.read_bytes()
    if data[40:44] != _FV_SIGNATURE:
        raise ValueError(f"{path} is not an OVMF variable store (no firmware volume)")
    fv_header = struct.unpack_from("<H", data, 48)[0]
    store_guid = uuid.UUID(bytes_le=data[fv_header : fv_header + 16])
    if store_guid != _AUTH_STORE:
        raise ValueError(f"{path}: variable store {store_guid} is not the authenticated one")
    size = struct.unpack_from("<I", data, fv_header + 16)[0]
    offset, end = fv_header + 28, fv_header + size
    found: dict[str, bytes] = {}
    while offset + _HEADER.size <= end:
        start, state, _r, _attrs, _count, _time, _key, name_size, data_size, _guid = (
            _HEADER.unpack_from(data, offset)
        )
        if start != _START_ID:
            break
        name_at = offset + _HEADER.size
        value_at = name_at + name_size
        if state == _VAR_ADDED:
            name = data[name_at:value_at].decode("utf-16-le").rstrip("\0")
            found[name] = data[value_at : value_at + data_size]
        offset = (value_at + data_size + 3) & ~3
    return found


def monotonic_count(path: Path) -> int:
    """The firmware's boot counter ("MTC", raised by one at every boot) in the store."""
    value = variables(path).get("MTC")
    if value is None:
        raise ValueError(f"{path} has no MTC variable: the firmware never booted with it")
    return struct.unpack("<I", value[:4])[0]
