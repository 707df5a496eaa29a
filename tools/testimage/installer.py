#!/usr/bin/env python3
"""Build the tiny installer ISO that RudderVirt's ISO-install end-to-end tests install from.

    python tools/testimage/installer.py --out-dir DIR [--kernel auto|generic|cloud]
    build_installer_iso(out_dir: Path, *, kernel: str = "auto") -> Path

It boots under BIOS (ISOLINUX) and UEFI (a standalone GRUB) to a `boot:` prompt that waits
for ever, like a distribution's installer menu. Typing `install url=http://HOST:PORT/answers`
or `install floppy` starts the installer (installer-files/init): it fetches the answer file,
partitions and formats the first hard disk, unpacks the tiny test system (the same files as
tools/testimage/build.py's image), installs the SSH keys of the answers and a boot loader,
and reboots into the installed system. See README.md ("The installer ISO").

Made from Debian packages installed here (nothing is downloaded): the tiny image's packages
plus isolinux, syslinux-common, grub-efi-amd64-bin, xorriso, dosfstools and mtools. Cached as
DIR/<hash>/installer.iso (with installer.json) like the image; needs root (the tiny system's
setuid sudo is owned by group sudo).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from pathlib import Path

try:  # imported as the package tools.testimage
    from . import build
    from .buildutil import BuildError, command_line, log, run, write_file
    from .cpioarchive import CpioWriter
    from .kernels import Kernel, find_kernel, install_modules
except ImportError:  # run as a script
    import build  # type: ignore[no-redef]
    from buildutil import BuildError, command_line, log, run, write_file  # type: ignore[no-redef]
    from cpioarchive import CpioWriter  # type: ignore[no-redef]
    from kernels import Kernel, find_kernel, install_modules  # type: ignore[no-redef]

__all__ = ["ISO_NAME", "BuildError", "build_installer_iso"]

FILES = build.HERE / "installer-files"
ISO_NAME = "installer.iso"
INFO_NAME = "installer.json"
VOLUME_ID = "RVINSTALL"
MARKER = "RUDDERVIRT-INSTALLER"
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
EXTLINUX = Path("/usr/bin/extlinux")
MKFS_FAT = Path("/usr/sbin/mkfs.fat")
# Host programs the installer runs (busybox's mkdosfs makes FAT32 even on a 32 MiB ESP, which
# has too few clusters for FAT32: UEFI's FAT driver then cannot read it).
INSTALLER_PROGRAMS = {EXTLINUX: "usr/bin/extlinux", MKFS_FAT: "usr/bin/mkfs.fat"}
PACKAGES = ("isolinux", "syslinux-common", "grub-efi-amd64-bin", "xorriso", "dosfstools", "mtools")
# Beyond the image's modules: the floppy (answers; FAT mounts default to iocharset ascii)
# and USB disks (the `usb` disk bus).
EXTRA_MODULES = ("floppy", "nls_ascii", "xhci_pci", "usb_storage")
MIB = 1024 * 1024


# --------------------------------------------------------------------------- inputs


def describe(kernel: Kernel, libs: list[str]) -> dict[str, object]:
    """Everything the ISO depends on: the image's inputs, our files, the boot packages."""
    files = {
        str(p.relative_to(build.HERE)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in [Path(__file__), *sorted(FILES.rglob("*"))]
        if p.is_file()
    }
    return {
        "image": build.describe_inputs(kernel, libs),
        "installer_files": files,
        "packages": build.package_versions(set(PACKAGES)),
    }


def check_tools() -> None:
    needed = (ISOLINUX_BIN, LDLINUX_C32, MBR_BIN, *INSTALLER_PROGRAMS)
    missing = [str(p) for p in needed if not p.is_file()]
    missing += [t for t in ("xorriso", "grub-mkstandalone", "mcopy", "mkfs.fat")
                if not shutil.which(t, path="/usr/bin:/usr/sbin:/bin:/sbin")]  # fmt: skip
    if missing:
        raise BuildError(
            "missing " + ", ".join(missing) + f" (apt-get install -y {' '.join(PACKAGES)})"
        )


# --------------------------------------------------------------------------- the system


def stage_system(workdir: Path, kernel: Kernel, libs: list[str], applets: list[str]) -> Path:
    """The installed system's files: exactly the tiny image's root file system."""
    root = workdir / "system"
    build.stage_root(root, kernel, libs, applets)
    write_file(root / "boot/initrd.img", build.build_initramfs(root, kernel, applets))
    return root


def _owned_by_number(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""  # the installer has no /etc/passwd: numeric ids only
    return info


def pack_system(root: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz", compresslevel=6) as archive:
        for path in sorted(root.iterdir()):
            archive.add(path, arcname=path.name, filter=_owned_by_number)


# --------------------------------------------------------------------------- the installer


def installer_initramfs(workdir: Path, kernel: Kernel, applets: list[str]) -> bytes:
    """busybox, the installer's /init, extlinux and mkfs.fat (with their libraries), modules,
    MBR code."""
    staged = workdir / "installer-root"
    modules, _missing = install_modules(staged, kernel, extra=EXTRA_MODULES)
    cpio = CpioWriter()
    for name in ("bin", "usr", "usr/bin", "dev", "proc", "sys", "tmp", "etc", "etc/installer",
                 "lib", "lib64", "lib/modules"):  # fmt: skip
        cpio.add(name, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, build.BUSYBOX.read_bytes())
    for applet in sorted({Path(a).name for a in applets}):
        cpio.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    cpio.add("init", stat.S_IFREG | 0o755, (FILES / "init").read_bytes())
    etc = "etc/installer"
    cpio.add(f"{etc}/modules", stat.S_IFREG | 0o644, "".join(f"{m}\n" for m in modules).encode())
    cpio.add(f"{etc}/udhcpc.script", stat.S_IFREG | 0o755, (FILES / "udhcpc.script").read_bytes())
    cpio.add(f"{etc}/mbr.bin", stat.S_IFREG | 0o644, MBR_BIN.read_bytes())
    folders = {"lib", "lib64", "usr", "usr/bin"}
    libs = set()
    for program, dest in INSTALLER_PROGRAMS.items():
        cpio.add(dest, stat.S_IFREG | 0o755, program.read_bytes())
        libs.update(build.shared_libraries(str(program)))
    for lib in sorted(libs):
        _add_with_parents(cpio, lib.lstrip("/"), Path(lib).read_bytes(), folders)
    release = f"lib/modules/{kernel.release}"
    cpio.add_tree(staged / release, release)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _add_with_parents(cpio: CpioWriter, name: str, body: bytes, folders: set[str]) -> None:
    """Add file `name` and the folders above it not yet in `folders` (updated)."""
    parts = Path(name).parts
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if folder not in folders:
            cpio.add(folder, stat.S_IFDIR | 0o755)
            folders.add(folder)
    cpio.add(name, stat.S_IFREG | 0o755, body)


# --------------------------------------------------------------------------- boot loaders


def grub_efi(config: str, dest: Path, workdir: Path) -> None:
    """A standalone GRUB EFI binary with `config` as its grub.cfg (all modules inside)."""
    cfg = workdir / f"{dest.stem}.cfg"
    cfg.write_text(config)
    run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", str(dest), "--locales=", "--fonts=",
         "--themes=", f"boot/grub/grub.cfg={cfg}"], timeout=120)  # fmt: skip


def efi_boot_image(bootx64: Path, dest: Path) -> None:
    """The El Torito UEFI boot image: a FAT file system with \\EFI\\BOOT\\BOOTX64.EFI."""
    kib = (bootx64.stat().st_size // 1024) + 1024
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run(["mkfs.fat", "-C", "-n", "EFIBOOT", str(dest), str(kib)], timeout=60)
    run(["mmd", "-i", str(dest), "::EFI", "::EFI/BOOT"], timeout=60, env=env)
    run(["mcopy", "-i", str(dest), str(bootx64), "::EFI/BOOT/BOOTX64.EFI"], timeout=60, env=env)


def stage_iso(workdir: Path, kernel: Kernel, libs: list[str]) -> Path:
    """The ISO's tree: boot loaders, kernel, installer initramfs, the packed system."""
    applets = build.busybox_applets()
    system = stage_system(workdir, kernel, libs, applets)
    iso = workdir / "iso"
    for folder in ("isolinux", "boot", "efi"):
        (iso / folder).mkdir(parents=True)
    shutil.copyfile(ISOLINUX_BIN, iso / "isolinux/isolinux.bin")
    shutil.copyfile(LDLINUX_C32, iso / "isolinux/ldlinux.c32")
    for name in ("isolinux.cfg", "boot.msg"):
        shutil.copyfile(FILES / name, iso / "isolinux" / name)
    shutil.copyfile(kernel.vmlinuz, iso / "boot/vmlinuz")
    write_file(iso / "boot/installer.gz", installer_initramfs(workdir, kernel, applets))
    pack_system(system, iso / "system.tgz")
    disk_cfg = (
        (FILES / "grub-disk.cfg")
        .read_text()
        .replace("@CMDLINE@", build.KERNEL_CMDLINE.replace(" quiet", ""))
    )
    grub_efi(disk_cfg, iso / "efi/tiny-bootx64.efi", workdir)
    grub_efi((FILES / "grub-iso.cfg").read_text(), workdir / "iso-bootx64.efi", workdir)
    efi_boot_image(workdir / "iso-bootx64.efi", iso / "efi/efiboot.img")
    write_file(iso / MARKER, "RudderVirt tiny test installer\n")
    return iso


def make_iso(tree: Path, dest: Path) -> None:
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(dest), "-V", VOLUME_ID, "-J", "-R",
         "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table",
         "-eltorito-alt-boot", "-e", "efi/efiboot.img", "-no-emul-boot",
         str(tree)], timeout=300)  # fmt: skip


# --------------------------------------------------------------------------- the build


def build_installer_iso(out_dir: Path, *, kernel: str = "auto") -> Path:
    """Return OUT_DIR/<hash>/installer.iso, building it first unless it exists.

    Raises BuildError when a tool is missing or a step fails; needs root to build."""
    out_dir = Path(out_dir).resolve()
    chosen = find_kernel(kernel)
    check_tools()
    libs = sorted({lib for program in build.PROGRAMS for lib in build.shared_libraries(program)})
    inputs = describe(chosen, libs)
    digest = build.inputs_hash(inputs)
    final_dir = out_dir / f"installer-{digest}"
    if (final_dir / ISO_NAME).is_file():
        return final_dir / ISO_NAME
    if os.geteuid() != 0:
        raise BuildError("building the installer ISO needs root (the system's setuid sudo)")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(stat.S_IMODE(out_dir.stat().st_mode) | 0o755)  # QEMU must traverse it
    log(f"building installer {digest} with kernel {chosen.release}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".installer-", dir=out_dir) as tmp:
        workdir = Path(tmp)
        out = workdir / "out"
        out.mkdir()
        make_iso(stage_iso(workdir, chosen, libs), out / ISO_NAME)
        info = {
            "hash": digest,
            "iso": ISO_NAME,
            "size": (out / ISO_NAME).stat().st_size,
            "sha256": hashlib.sha256((out / ISO_NAME).read_bytes()).hexdigest(),
            "build_seconds": round(time.monotonic() - started, 2),
            "inputs": inputs,
        }
        write_file(out / INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
        _publish(out, final_dir)
    log(f"built {info['size'] // MIB} MiB in {info['build_seconds']} s")
    return final_dir / ISO_NAME


def _publish(out: Path, final_dir: Path) -> None:
    out.chmod(0o755)
    (out / ISO_NAME).chmod(0o644)
    try:
        out.rename(final_dir)
    except OSError:
        if not (final_dir / ISO_NAME).is_file():  # a concurrent builder did not win either
            raise


def iso_info(iso: Path) -> dict[str, object]:
    """installer.json of a built ISO (its sha256 saves hashing it again)."""
    return json.loads((iso.parent / INFO_NAME).read_text())


def main(argv: list[str] | None = None) -> int:
    return command_line((__doc__ or "").split("\n\n")[0], build_installer_iso, argv)


if __name__ == "__main__":
    sys.exit(main())
