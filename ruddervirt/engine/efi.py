"""UEFI (OVMF) for builds, templates and clones, and the NVRAM that travels with a template.

A VM with `efiFirmware` boots OVMF; with `secureBoot: true` it boots the Secure Boot build
of OVMF with Microsoft's and the distributions' keys enrolled (what a Windows or a signed
Linux installer expects), which needs a q35 machine with SMM. Its NVRAM (boot entries, Secure
Boot state) starts as a copy of OVMF's variable template, made by libvirt at first start in
the build's working folder. Capture copies it next to the template's disks and records it in
the template spec:

    TemplateVM.spec["efi"] == {"secure_boot": bool, "machine": "pc" | "q35", "nvram": "<path>"}

Clones must not share that file (the firmware writes to it): `instance_efi` copies it for
each clone and returns the EfiSpec (and `machine_for` the machine type) to boot it with,
so a clone boots exactly the way the build's VM did.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.engine.errors import BuildError
from ruddervirt.hypervisor.specs import EfiSpec

OVMF_DIR = Path("/usr/share/OVMF")
NVRAM_NAME = "nvram.fd"


@dataclass(frozen=True)
class Firmware:
    loader: Path  # the read-only code flash
    vars_template: Path  # the pristine variable store copied into each VM's NVRAM
    machine: str


PLAIN = Firmware(OVMF_DIR / "OVMF_CODE_4M.fd", OVMF_DIR / "OVMF_VARS_4M.fd", "pc")
# Secure Boot: SMM-protected variables (q35 only), Microsoft + distribution keys enrolled.
SECURE = Firmware(OVMF_DIR / "OVMF_CODE_4M.secboot.fd", OVMF_DIR / "OVMF_VARS_4M.ms.fd", "q35")


def firmware(secure_boot: bool) -> Firmware:
    """The OVMF files to use. BuildError when they are not installed."""
    chosen = SECURE if secure_boot else PLAIN
    for path in (chosen.loader, chosen.vars_template):
        if not path.is_file():
            raise BuildError(
                f"UEFI firmware {path} is missing on this host (install the Debian package ovmf)"
            )
    return chosen


def machine_for(efi: Mapping[str, object] | None) -> str:
    """The machine type a VM with this `efi` record boots on ("pc" for BIOS)."""
    if not efi:
        return "pc"
    return str(efi.get("machine") or ("q35" if efi.get("secure_boot") else "pc"))


def build_efi(workdir: Path, secure_boot: bool) -> EfiSpec:
    """The EfiSpec of a build VM: a fresh NVRAM in `workdir` (libvirt creates it at start)."""
    chosen = firmware(secure_boot)
    (workdir / NVRAM_NAME).unlink(missing_ok=True)  # a retried build starts afresh too
    return EfiSpec(
        loader=chosen.loader,
        nvram=workdir / NVRAM_NAME,
        secure_boot=secure_boot,
        nvram_template=chosen.vars_template,
    )


def capture_nvram(spec: EfiSpec, dest_dir: Path) -> dict[str, object]:
    """Copy a shut-off build VM's NVRAM into `dest_dir`; returns the template's efi record.

    When the VM never started (no NVRAM yet), the pristine template is copied instead."""
    dest = dest_dir / NVRAM_NAME
    source = spec.nvram if spec.nvram.is_file() else spec.nvram_template
    if source is None or not source.is_file():
        raise BuildError(f"the VM's UEFI variables ({spec.nvram}) are missing")
    shutil.copyfile(source, dest)
    dest.chmod(0o644)
    return {
        "secure_boot": spec.secure_boot,
        "machine": firmware(spec.secure_boot).machine,
        "nvram": str(dest),
    }


def template_efi(efi: Mapping[str, object] | None) -> EfiSpec | None:
    """The EfiSpec of a halted template domain: it points at the captured NVRAM itself.

    Never start a domain defined with it (it would write the template's NVRAM), and
    undefine it with remove_nvram=False, or libvirt deletes the template's NVRAM."""
    if not efi:
        return None
    secure = bool(efi.get("secure_boot"))
    chosen = firmware(secure)
    nvram = efi.get("nvram")
    return EfiSpec(
        loader=chosen.loader,
        nvram=Path(str(nvram)) if nvram else Path("/nonexistent") / NVRAM_NAME,
        secure_boot=secure,
        nvram_template=chosen.vars_template,
    )


def instance_efi(efi: Mapping[str, object] | None, dest_dir: Path) -> EfiSpec | None:
    """For a clone (or any VM booted from a template's disks): copy the template's NVRAM
    into `dest_dir` and return the EfiSpec to boot with (None for BIOS templates).

    A template without a stored NVRAM falls back to OVMF's pristine variables (libvirt
    copies them at first start). Pair it with `machine_for(efi)` for DomainSpec.machine."""
    if not efi:
        return None
    secure = bool(efi.get("secure_boot"))
    chosen = firmware(secure)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / NVRAM_NAME
    stored = efi.get("nvram")
    if stored and Path(str(stored)).is_file():
        shutil.copyfile(Path(str(stored)), dest)
        dest.chmod(0o644)
    return EfiSpec(
        loader=chosen.loader, nvram=dest, secure_boot=secure, nvram_template=chosen.vars_template
    )


def relocate(efi: Mapping[str, object] | None, old: Path, new: Path) -> dict[str, object] | None:
    """The record with its NVRAM path moved from under `old` to under `new`."""
    if not efi:
        return None
    moved = dict(efi)
    nvram = efi.get("nvram")
    if nvram:
        moved["nvram"] = str(new / Path(str(nvram)).relative_to(old))
    return moved
