"""Caps on what one manifest may ask of the host (ours: the manifest format has none).

Without them a manifest could ask for `cpu: 100000`, `memory: 1Ei`, a 4 EiB disk, a
`timeout: 1000000h` or 5,000 VMs and pass validation. The portal builds a `Limits` from its
settings (`modules.limits.manifest_limits`); this package stays free of Django and uses
`DEFAULT_LIMITS` when it is given nothing. A value over a cap is an error at that value's
path and line, naming the cap and the setting that raises it.

`NO_LIMITS` (every cap None) is for re-reading a text that was accepted already (a build's
or a version's manifest): lowering a cap later must not break what exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

GI = 1024**3
HOUR = 3600.0


@dataclass(frozen=True)
class Limits:
    """Each field is a cap (None: no cap). Sizes in bytes, durations in seconds."""

    vms: int | None = 20  # VMs per manifest
    vm_cpus: int | None = 16  # vCPUs per VM (after rounding `cpu` up)
    vm_memory: int | None = 64 * GI  # memory per VM
    disk_size: int | None = 500 * GI  # size of each disk
    disks_per_vm: int | None = 8
    isos_per_vm: int | None = 4
    provisioners_per_vm: int | None = 100
    files: int | None = 100  # entries of `files`
    networks: int | None = 16  # VPCs per manifest, and subnets per manifest
    boot_command_chars: int | None = 20_000  # all `bootCommand` strings of one VM together
    build_timeout_s: float | None = 24 * HOUR  # timeout x (retries + 1); every step/SSH timeout
    iso_cache_ttl_s: float | None = 30 * 24 * HOUR

    @classmethod
    def unlimited(cls) -> Limits:
        return cls(**{f.name: None for f in fields(cls)})


# The portal setting (environment variable) behind each cap, named in error messages.
SETTINGS: dict[str, str] = {
    "vms": "RUDDERVIRT_MAX_VMS",
    "vm_cpus": "RUDDERVIRT_MAX_VM_CPUS",
    "vm_memory": "RUDDERVIRT_MAX_VM_MEMORY",
    "disk_size": "RUDDERVIRT_MAX_DISK_SIZE",
    "disks_per_vm": "RUDDERVIRT_MAX_DISKS_PER_VM",
    "isos_per_vm": "RUDDERVIRT_MAX_ISOS_PER_VM",
    "provisioners_per_vm": "RUDDERVIRT_MAX_PROVISIONERS_PER_VM",
    "files": "RUDDERVIRT_MAX_FILES",
    "networks": "RUDDERVIRT_MAX_NETWORKS",
    "boot_command_chars": "RUDDERVIRT_MAX_BOOT_COMMAND_CHARS",
    "build_timeout_s": "RUDDERVIRT_MAX_BUILD_TIMEOUT_S",
    "iso_cache_ttl_s": "RUDDERVIRT_MAX_ISO_CACHE_TTL_S",
}

DEFAULT_LIMITS = Limits()
NO_LIMITS = Limits.unlimited()


def size_text(n: float) -> str:
    """Bytes as the manifest writes them: 64Gi, 512Mi, 1.5Ti (exact when it can be)."""
    for suffix, power in (("Ei", 6), ("Pi", 5), ("Ti", 4), ("Gi", 3), ("Mi", 2), ("Ki", 1)):
        unit = 1024**power
        if n >= unit:
            value = n / unit
            return f"{int(value)}{suffix}" if value == int(value) else f"{value:.1f}{suffix}"
    return f"{int(n)}"


def duration_text(seconds: float) -> str:
    """Seconds as a Go-style duration: 24h, 1h30m, 90s."""
    if seconds >= 100_000 * HOUR:
        return f"{seconds / HOUR:.0f}h"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"
