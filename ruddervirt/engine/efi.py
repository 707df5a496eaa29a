"""UEFI (OVMF) for builds, and the NVRAM that travels with a template.

A VM with `efiFirmware` boots OVMF; with `secureBoot: true` it boots the Secure Boot build
of OVMF with Microsoft's and the distributions' keys enrolled (what a Windows or a signed
Linux installer expects), which needs a q35 machine with SMM. Its NVRAM (boot entries, Secure
Boot state) starts as a copy of OVMF's variable template, made by libvirt at first start in
the build's working folder. Capture copies it next to the template's disks; the version's
firmware record (ruddervirt.spec.FirmwareRecord) keeps the exact loader and variable
template the build booted and that NVRAM. Templates point at it; every clone boots from a
copy of it (`copy_nvram`) with the same loader, through ruddervirt.spec.machine_spec, so a
clone boots exactly the way the build's VM did.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ruddervirt.engine.errors import BuildError
from ruddervirt.hypervisor.specs import EfiSpec
from ruddervirt.spec import FirmwareRecord, NvramRecord

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


def firmware_record(spec: EfiSpec | None) -> FirmwareRecord:
    """The firmware record of a build VM booted with `spec` (BIOS for None): the exact
    loader and variable template files it booted, not yet its captured NVRAM."""
    if spec is None:
        return FirmwareRecord()
    return FirmwareRecord(
        kind="uefi",
        machine=SECURE.machine if spec.secure_boot else PLAIN.machine,
        secure_boot=spec.secure_boot,
        loader=PurePosixPath(str(spec.loader)),
        vars_template=PurePosixPath(
            str(spec.nvram_template or firmware(spec.secure_boot).vars_template)
        ),
    )


def capture_nvram(spec: EfiSpec, dest_dir: Path, base: Path) -> NvramRecord:
    """Copy a shut-off build VM's NVRAM into `dest_dir`; returns its record, the path
    relative to `base` (the capture folder).

    When the VM never started (no NVRAM yet), the pristine template is copied instead."""
    dest = dest_dir / NVRAM_NAME
    source = spec.nvram if spec.nvram.is_file() else spec.nvram_template
    if source is None or not source.is_file():
        raise BuildError(f"the VM's UEFI variables ({spec.nvram}) are missing")
    shutil.copyfile(source, dest)
    dest.chmod(0o644)
    return NvramRecord(
        path=PurePosixPath(dest.relative_to(base).as_posix()), sha256=sha256_of(dest)
    )


def copy_nvram(captured: Path, dest_dir: Path, *, name: str = NVRAM_NAME) -> Path:
    """A clone's own copy of a template's captured NVRAM, in `dest_dir` (the firmware
    writes to it, so clones never share one). FileNotFoundError when it is missing: a
    clone never silently boots with pristine variables instead."""
    if not captured.is_file():
        raise FileNotFoundError(f"the template's UEFI variables {captured} are missing")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    shutil.copyfile(captured, dest)
    dest.chmod(0o644)
    return dest


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
