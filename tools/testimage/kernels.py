"""The Debian kernel of the test image and the modules it needs (see MODULES)."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

try:  # imported as the package tools.testimage
    from .buildutil import BuildError, run, write_file
except ImportError:  # tools/testimage/build.py run as a script
    from buildutil import BuildError, run, write_file  # type: ignore[no-redef]

KERNEL_PACKAGES = {"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}
# Loaded in this order by the initramfs. Missing ones are left out (the cloud kernel has no
# e1000, e1000e, 8139cp/8139too or ahci); built-in ones need no loading.
MODULES = (
    # disks and CD-ROMs: virtio, virtio-scsi, IDE (i440fx), SATA (AHCI) and USB (xHCI) buses
    "virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "sr_mod", "ata_piix", "ahci",
    "xhci_pci", "usb_storage", "uas",
    # the root file system is ext2, mounted by the ext4 driver; NoCloud seeds are ISO 9660/vfat
    "ext4", "crc32c_generic", "isofs", "vfat", "nls_cp437", "nls_utf8",
    # NIC models of the manifest: virtio, e1000, e1000e, rtl8139 (QEMU's is the 8139C+)
    "virtio_net", "e1000", "e1000e", "8139cp", "8139too",
    # the ACPI power button reaches acpid as an input event; a fast entropy source
    "button", "evdev", "virtio_rng",
)  # fmt: skip
NIC_MODEL_MODULES = {
    "virtio": "virtio_net",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "8139cp",
}
DISK_BUS_MODULES = {
    "virtio": "virtio_blk",
    "scsi": "virtio_scsi",
    "sata": "ahci",
    "ide": "ata_piix",
    "usb": "usb_storage",
}


@dataclass(frozen=True)
class Kernel:
    """An installed Debian kernel: its flavor, meta package, image package and release."""

    flavor: str
    meta_package: str
    package: str
    release: str

    @property
    def vmlinuz(self) -> Path:
        return Path("/boot") / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return Path("/lib/modules") / self.release


def is_installed(package: str) -> bool:
    try:
        status = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", package], timeout=30)
    except BuildError:
        return False
    return status.startswith("ii")


def find_kernel(flavor: str) -> Kernel:
    """The kernel to boot. "auto" prefers the generic kernel, the only one with drivers for
    every NIC model and disk bus of the manifest, and falls back to the cloud kernel."""
    if flavor == "auto":
        flavor = "generic" if is_installed(KERNEL_PACKAGES["generic"]) else "cloud"
    if flavor not in KERNEL_PACKAGES:
        raise BuildError(f"unknown kernel flavor {flavor!r}: use auto, generic or cloud")
    meta = KERNEL_PACKAGES[flavor]
    if not is_installed(meta):
        raise BuildError(f"{meta} is not installed (apt-get install -y {meta})")
    depends = run(["dpkg-query", "-W", "-f", "${Depends}", meta], timeout=30)
    found = re.search(r"linux-image-(\d[^\s,]*)", depends)
    if not found:
        raise BuildError(f"cannot tell which kernel {meta} depends on: {depends!r}")
    kernel = Kernel(flavor, meta, found.group(0), found.group(1))
    if not kernel.vmlinuz.is_file() or not kernel.modules_dir.is_dir():
        raise BuildError(f"{kernel.vmlinuz} or {kernel.modules_dir} is missing")
    return kernel


def read_modules_dep(kernel: Kernel) -> dict[str, list[str]]:
    """Module name -> [its own path, then its dependencies' paths], from modules.dep."""
    deps = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        deps[name] = [path, *rest.split()]
    return deps


def install_modules(
    root: Path, kernel: Kernel, extra: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Copy MODULES (then `extra`) and their dependencies, run depmod; return (to load,
    missing)."""
    deps = read_modules_dep(kernel)
    builtin_text = (kernel.modules_dir / "modules.builtin").read_text()
    builtin = {Path(p).name.split(".ko")[0].replace("-", "_") for p in builtin_text.split()}
    load, missing, paths = [], [], set()
    for name in dict.fromkeys((*MODULES, *extra)):
        if name in deps:
            load.append(name)
            paths.update(deps[name])
        elif name not in builtin:
            missing.append(name)
    target = root / "lib/modules" / kernel.release
    for rel in sorted(paths):
        write_file(target / rel, (kernel.modules_dir / rel).read_bytes())
    for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (kernel.modules_dir / extra).exists():
            shutil.copyfile(kernel.modules_dir / extra, target / extra)
    run(["depmod", "-b", str(root), kernel.release], timeout=60)
    return load, missing


def capabilities(load: list[str], kernel: Kernel) -> dict[str, list[str]]:
    builtin = (kernel.modules_dir / "modules.builtin").read_text()

    def available(module: str) -> bool:
        return module in load or f"/{module}.ko" in builtin

    return {
        "nic_models": [m for m, mod in NIC_MODEL_MODULES.items() if available(mod)],
        "disk_buses": [b for b, mod in DISK_BUS_MODULES.items() if available(mod)],
    }
