#!/usr/bin/env python3
"""Build the tiny bootable guest image that stands in for a cloud image in end-to-end tests.

    python tools/testimage/build.py --out-dir DIR [--kernel auto|generic|cloud]
    build_image(out_dir: Path, *, kernel: str = "auto") -> Path

The image is made only from Debian packages installed on this machine (a kernel, busybox-static,
dropbear-bin, openssh-sftp-server, extlinux); nothing is downloaded. It is cached as
``DIR/<hash>/tiny.qcow2`` (with ``image.json`` beside it), where ``<hash>`` covers every file in
tools/testimage/ (except README.md) and the versions of the Debian packages used; when that file
exists the build returns at once. A build happens in a temporary folder inside DIR and appears
by one atomic rename, so concurrent builders and interrupted builds never expose half an image.
Building needs root: the boot loader is installed through a loop mount. See README.md.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # imported as the package tools.testimage
    from .buildutil import BuildError, command_line, log, run, write_file
    from .cpioarchive import CpioWriter
    from .kernels import Kernel, capabilities, find_kernel, install_modules, is_installed
except ImportError:  # run as a script: python tools/testimage/build.py
    from buildutil import BuildError, command_line, log, run, write_file  # type: ignore[no-redef]
    from cpioarchive import CpioWriter  # type: ignore[no-redef]
    from kernels import (  # type: ignore[no-redef]
        Kernel,
        capabilities,
        find_kernel,
        install_modules,
        is_installed,
    )

__all__ = ["IMAGE_NAME", "INFO_NAME", "BuildError", "build_image", "is_installed"]

HERE = Path(__file__).resolve().parent
GUEST_FILES = HERE / "guest"
INITRAMFS_INIT = HERE / "initramfs" / "init"
IMAGE_NAME = "tiny.qcow2"
INFO_NAME = "image.json"
FS_LABEL = "tinyroot"
ROOT_PASSWORD = "rudder"  # noqa: S105 - the test image's documented console password
PASSWORD_SALT = "ruddervirt"  # noqa: S105 - fixed: the same inputs give the same /etc/shadow
MIB = 1024 * 1024
FREE_SPACE = 32 * MIB  # room for provisioners to write files
KERNEL_CMDLINE = f"root=LABEL={FS_LABEL} console=tty1 console=ttyS0,115200n8 quiet"
SUDO_GID = 27

TOOL_PACKAGES = (
    "busybox-static", "dropbear-bin", "openssh-sftp-server", "extlinux", "e2fsprogs",
    "qemu-utils", "kmod",
)  # fmt: skip
BUSYBOX = Path("/bin/busybox")
# Applets not linked: busybox itself (a regular file), and package managers, because a guest
# that answers to `command -v dpkg` would fool distro detection.
SKIPPED_APPLETS = frozenset({"busybox", "dpkg", "dpkg-deb", "rpm", "rpm2cpio", "linuxrc"})
# Dynamically linked programs: host path -> path in the image.
PROGRAMS = {
    "/usr/sbin/dropbear": "/usr/sbin/dropbear",
    "/usr/bin/dropbearkey": "/usr/bin/dropbearkey",
    "/usr/lib/openssh/sftp-server": "/usr/lib/sftp-server",  # where dropbear looks for it
}


# --------------------------------------------------------------------------- inputs and hash


def shared_libraries(program: str) -> list[str]:
    """Absolute paths of the shared libraries `program` loads (the dynamic loader included)."""
    libs = []
    for line in run(["ldd", program], timeout=30).splitlines():
        found = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if found:
            libs.append(found.group(1))
    return libs


def owning_packages(paths: list[str]) -> set[str]:
    """The Debian packages that ship `paths`, trying the /usr-merged spellings too."""
    candidates = set()
    for path in paths:
        real = os.path.realpath(path)
        for p in (path, real):
            candidates |= {p, p.removeprefix("/usr"), "/usr" + p if not p.startswith("/usr") else p}
    try:
        out = subprocess.run(
            ["dpkg-query", "-S", *sorted(candidates)], capture_output=True, text=True, timeout=30
        ).stdout  # exits 1 for the spellings that no package ships, which is expected
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise BuildError(f"dpkg-query -S: {exc}") from exc
    packages = set()
    for line in out.splitlines():
        owners, _, _ = line.partition(": ")
        packages |= {owner.strip().split(":")[0] for owner in owners.split(",")}
    return packages


def package_versions(packages: set[str]) -> dict[str, str]:
    out = run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *sorted(packages)], timeout=30)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


# The installer ISO (installer.py) is built from this image's parts, not the other way round:
# its files do not change the image.
NOT_IMAGE_INPUTS = frozenset({"README.md", "installer.py", "installer-files"})


def source_files() -> list[Path]:
    """The files of tools/testimage/ that make the image (not README.md, the installer ISO's
    files or bytecode)."""
    return sorted(
        p
        for p in HERE.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.relative_to(HERE).parts[0] not in NOT_IMAGE_INPUTS
        and p.name != "README.md"
    )


def describe_inputs(kernel: Kernel, libs: list[str]) -> dict[str, object]:
    """Everything the image depends on; its hash names the cache folder."""
    files = {}
    for path in source_files():
        executable = "x" if os.access(path, os.X_OK) else "-"
        files[str(path.relative_to(HERE))] = (
            executable + hashlib.sha256(path.read_bytes()).hexdigest()
        )
    packages = {kernel.meta_package, kernel.package, *TOOL_PACKAGES} | owning_packages(libs)
    return {
        "kernel": {"flavor": kernel.flavor, "release": kernel.release},
        "packages": package_versions(packages),
        "files": files,
    }


def inputs_hash(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- root file system


def make_skeleton(root: Path) -> None:
    for name in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/libexec", "lib", "lib64", "etc/tiny",
                 "etc/dropbear", "dev", "proc", "sys", "run", "var/log", "var/lib", "home", "mnt",
                 "boot/extlinux"):  # fmt: skip
        (root / name).mkdir(parents=True, exist_ok=True)
    for name, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name).chmod(mode)
    (root / "var/run").symlink_to("../run")


def busybox_applets() -> list[str]:
    """Applet paths such as "bin/sh" and "usr/bin/awk"."""
    applets = run([str(BUSYBOX), "--list-full"], timeout=30).split()
    return [a for a in applets if "/" in a and Path(a).name not in SKIPPED_APPLETS]


def install_busybox(root: Path, applets: list[str]) -> None:
    write_file(root / "bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in applets:
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    # sudo's way to root: a setuid copy that /etc/busybox.conf lets run only nsenter.
    sudo_busybox = root / "usr/libexec/busybox-sudo"
    write_file(sudo_busybox, BUSYBOX.read_bytes(), 0o750)
    os.chown(sudo_busybox, 0, SUDO_GID)
    sudo_busybox.chmod(0o4750)  # after chown, which clears the setuid bit


def install_programs(root: Path, libs: list[str]) -> None:
    for source, dest in PROGRAMS.items():
        write_file(root / dest.lstrip("/"), Path(source).read_bytes(), 0o755)
    (root / "usr/lib/openssh").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/openssh/sftp-server").symlink_to("../sftp-server")
    for lib in libs:
        write_file(root / lib.lstrip("/"), Path(lib).read_bytes(), 0o755)


def copy_guest_files(root: Path) -> None:
    """Copy guest/ over the root; executables get 0755, /etc/busybox.conf 0600 (busybox
    ignores a config file that others can write, and only the setuid copy may read it)."""
    for source in sorted(GUEST_FILES.rglob("*")):
        if source.is_file():
            rel = source.relative_to(GUEST_FILES)
            mode = 0o755 if os.access(source, os.X_OK) else 0o644
            if str(rel) == "etc/busybox.conf":
                mode = 0o600
            write_file(root / rel, source.read_bytes(), mode)


def write_accounts(root: Path) -> None:
    hashed = run([str(BUSYBOX), "mkpasswd", "-m", "sha512", ROOT_PASSWORD, PASSWORD_SALT]).strip()
    write_file(
        root / "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )
    write_file(
        root / "etc/group",
        "root:x:0:\ndaemon:x:1:\ntty:x:5:\ndisk:x:6:\nsudo:x:27:\nusers:x:100:\nnogroup:x:65534:\n",
    )
    shadow = f"root:{hashed}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
    write_file(root / "etc/shadow", shadow + "nobody:*:19000:0:99999:7:::\n", 0o600)


def write_boot_config(root: Path, kernel: Kernel) -> None:
    shutil.copyfile(kernel.vmlinuz, root / "boot/vmlinuz")
    write_file(
        root / "boot/extlinux/extlinux.conf",
        "DEFAULT tiny\nPROMPT 0\nTIMEOUT 0\nLABEL tiny\n"
        f"  LINUX /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND {KERNEL_CMDLINE}\n",
    )


def stage_root(root: Path, kernel: Kernel, libs: list[str], applets: list[str]) -> dict:
    """Fill `root` with the guest's file system; return facts for image.json."""
    make_skeleton(root)
    install_busybox(root, applets)
    install_programs(root, libs)
    load, missing = install_modules(root, kernel)
    copy_guest_files(root)
    write_accounts(root)
    write_file(root / "etc/tiny/modules", "".join(f"{m}\n" for m in load))
    write_boot_config(root, kernel)
    return {"modules": load, "modules_missing": missing}


# --------------------------------------------------------------------------- initramfs


def build_initramfs(root: Path, kernel: Kernel, applets: list[str]) -> bytes:
    """A gzip'd initramfs: busybox, /init, and the same modules as the root file system."""
    cpio = CpioWriter()
    for name in ("bin", "dev", "proc", "sys", "newroot", "etc", "etc/tiny", "lib", "lib/modules"):
        cpio.add(name, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes())
    for applet in sorted({Path(a).name for a in applets}):
        cpio.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    cpio.add("init", stat.S_IFREG | 0o755, INITRAMFS_INIT.read_bytes())
    cpio.add("etc/tiny/modules", stat.S_IFREG | 0o644, (root / "etc/tiny/modules").read_bytes())
    release = f"lib/modules/{kernel.release}"
    cpio.add_tree(root / release, release)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------------- disk image


def tree_size(root: Path) -> int:
    """Bytes the tree takes in 4 KiB blocks (every file and folder rounded up)."""
    total = 0
    for path in root.rglob("*"):
        size = 0 if path.is_symlink() else path.stat().st_size
        total += max(4096, -(-size // 4096) * 4096)
    return total


def make_filesystem(root: Path, raw: Path) -> None:
    """Whole-disk ext2 (extlinux cannot boot from ext4) filled from `root` without mounting."""
    used = tree_size(root)
    size_mib = -(-(used * 11 // 10 + FREE_SPACE + 4 * MIB) // MIB)
    run(
        ["mkfs.ext2", "-q", "-F", "-L", FS_LABEL, "-b", "4096", "-I", "256", "-m", "0",
         "-d", str(root), str(raw), f"{size_mib}M"],
        timeout=120,
    )  # fmt: skip


def install_bootloader(raw: Path, workdir: Path) -> None:
    """extlinux into the file system's boot sector: SeaBIOS boots the whole disk from it."""
    mountpoint = workdir / "mnt"
    mountpoint.mkdir()
    run(["mount", "-o", "loop", "-t", "ext4", str(raw), str(mountpoint)], timeout=60)
    try:
        run(["extlinux", "--install", str(mountpoint / "boot/extlinux")], timeout=60)
    finally:
        try:
            run(["umount", str(mountpoint)], timeout=60)
        except BuildError:
            run(["umount", "-l", str(mountpoint)], timeout=60)
            raise


def convert_to_qcow2(raw: Path, dest: Path) -> None:
    run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(dest)], timeout=300)


# --------------------------------------------------------------------------- the build


def build_into(workdir: Path, out: Path, kernel: Kernel, libs: list[str], inputs: dict) -> dict:
    """Build tiny.qcow2 and image.json into `out` (inside `workdir`); return the info."""
    started = time.monotonic()
    applets = busybox_applets()
    root = workdir / "root"
    facts = stage_root(root, kernel, libs, applets)
    write_file(root / "boot/initrd.img", build_initramfs(root, kernel, applets))
    log(f"root file system staged ({tree_size(root) // MIB} MiB)")
    raw = workdir / "disk.raw"
    make_filesystem(root, raw)
    install_bootloader(raw, workdir)
    out.mkdir()
    convert_to_qcow2(raw, out / IMAGE_NAME)
    info = {
        "hash": inputs_hash(inputs),
        "image": IMAGE_NAME,
        "virtual_size": raw.stat().st_size,
        "file_size": (out / IMAGE_NAME).stat().st_size,
        "fs_label": FS_LABEL,
        "root_password": ROOT_PASSWORD,
        "kernel_cmdline": KERNEL_CMDLINE,
        **facts,
        **capabilities(facts["modules"], kernel),
        "build_seconds": round(time.monotonic() - started, 2),
        "inputs": inputs,
    }
    write_file(out / INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def publish(out: Path, final_dir: Path) -> None:
    """Move the finished folder into place atomically; a concurrent builder may have won."""
    out.chmod(0o755)  # QEMU (user libvirt-qemu) must reach the image as a backing file
    (out / IMAGE_NAME).chmod(0o644)
    if final_dir.exists() and not (final_dir / IMAGE_NAME).is_file():
        shutil.rmtree(final_dir)  # left by hand without its image: not a valid cache entry
    try:
        out.rename(final_dir)
    except OSError:
        if not (final_dir / IMAGE_NAME).is_file():
            raise


def build_image(out_dir: Path, *, kernel: str = "auto") -> Path:
    """Return the path of OUT_DIR/<hash>/tiny.qcow2, building it first unless it exists.

    `kernel` picks the Debian kernel: "generic" (linux-image-amd64: drivers for every NIC model
    and disk bus), "cloud" (linux-image-cloud-amd64: virtio, SCSI and IDE only) or "auto"
    (generic when installed). Raises BuildError when a step fails; needs root to build.
    """
    out_dir = Path(out_dir).resolve()
    chosen = find_kernel(kernel)
    libs = sorted({lib for program in PROGRAMS for lib in shared_libraries(program)})
    inputs = describe_inputs(chosen, libs)
    final_dir = out_dir / inputs_hash(inputs)
    if (final_dir / IMAGE_NAME).is_file():
        return final_dir / IMAGE_NAME
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (extlinux is installed via a loop mount)")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(stat.S_IMODE(out_dir.stat().st_mode) | 0o755)  # QEMU must traverse it
    log(f"building {final_dir.name} with kernel {chosen.release}")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        workdir = Path(tmp)
        info = build_into(workdir, workdir / "out", chosen, libs, inputs)
        publish(workdir / "out", final_dir)
    log(f"built {info['file_size'] // 1024} KiB in {info['build_seconds']} s")
    return final_dir / IMAGE_NAME


def main(argv: list[str] | None = None) -> int:
    return command_line(__doc__.split("\n\n")[0], build_image, argv)


if __name__ == "__main__":
    sys.exit(main())
