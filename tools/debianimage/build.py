#!/usr/bin/env python3
"""Build the Debian 12 test OS image: Debian's genericcloud image, remade from Debian packages.

    python tools/debianimage/build.py [--cache-dir DIR] [--key]   # prints the image path last
    build_image(cache_dir: Path | None = None) -> Path

mmdebstrap installs the packages of recipe.py from the Debian archive (nothing else is
downloaded); the files of rootfs/ are laid over them; the machine identity is emptied (an empty
/etc/machine-id, no SSH host keys: both are made at first boot, as on the official images); the
tree becomes a whole-disk ext4 file system with extlinux in its boot sector (SeaBIOS boots it),
converted to qcow2. The result is ``DIR/debian12-<key>/debian12.qcow2`` with ``packages.txt``
(``dpkg -l`` of the image) and ``image.json`` beside it, where ``<key>`` is the recipe's content
key (recipe.py). DIR defaults to ``$RUDDERVIRT_IMAGE_CACHE`` or /var/lib/ruddervirt/cache/images.
When the image exists the call returns at once; otherwise it builds, under a lock that
serializes builders, in a temporary folder that appears by one atomic rename. Building needs
root (mmdebstrap's root mode and a loop mount). See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.debianimage.recipe import HERE, ROOTFS, Recipe, load_recipe
from tools.testimage.build import install_bootloader
from tools.testimage.buildutil import BuildError, run, write_file
from tools.testimage.kernels import is_installed

__all__ = ["IMAGE_NAME", "INFO_NAME", "PACKAGES_NAME", "BuildError", "build_image"]

IMAGE_NAME = "debian12.qcow2"
INFO_NAME = "image.json"
PACKAGES_NAME = "packages.txt"
ENTRY_PREFIX = "debian12-"
CACHE_ENV = "RUDDERVIRT_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/lib/ruddervirt/cache/images")
LOCK_NAME = ".debianimage.lock"
LOCK_WAIT_S = 1800.0
MMDEBSTRAP_TIMEOUT_S = 1800.0
FS_LABEL = "rvdebian12"
KERNEL_CMDLINE = f"root=LABEL={FS_LABEL} ro console=tty0 console=ttyS0,115200"
DEFAULT_USER = "debian"  # cloud.cfg's default_user: made by cloud-init at first boot
MIB = 1024 * 1024
DISK_SIZE = 2048 * MIB  # the virtual size of Debian's genericcloud image; clones may grow it
# zlib-compressed clusters: 129 MiB instead of 356 MiB, and no slower to boot under TCG (QEMU
# inflates them natively, the guest's CPU is the emulated part): measured 49-53 s to SSH
# compressed against 66-70 s uncompressed on a busy host (README.md). zlib, not zstd: the same
# size and speed here, and every qemu-img reads it.
COMPRESS = True
# Files made at build time that must not travel into every VM made from the image.
IDENTITY_FILES = ("etc/resolv.conf", "var/lib/dbus/machine-id", "var/lib/systemd/random-seed")
BUILD_LEFTOVERS = (
    "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old", "var/log/apt/*", "var/log/dpkg.log", "var/log/alternatives.log",
)  # fmt: skip


def log(message: str) -> None:
    print(f"debianimage: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """``$RUDDERVIRT_IMAGE_CACHE``, else /var/lib/ruddervirt/cache/images."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def entry_dir(cache_dir: Path, recipe: Recipe) -> Path:
    """The cache folder of ``recipe``'s image (whether it exists or not)."""
    return Path(cache_dir).resolve() / f"{ENTRY_PREFIX}{recipe.key()}"


def cached_image(cache_dir: Path | None = None) -> Path | None:
    """The image of the current recipe if it is built already, else None (never builds)."""
    image = entry_dir(cache_dir or default_cache_dir(), load_recipe()) / IMAGE_NAME
    return image if image.is_file() else None


def prepare_cache_dir(cache_dir: Path) -> None:
    """Create ``cache_dir`` (folders made here get mode 0755) and check that QEMU, which runs
    as libvirt-qemu, can traverse every folder above the images."""
    missing = [p for p in (cache_dir, *cache_dir.parents) if not p.exists()]
    for folder in cache_dir.parents:
        if folder.exists() and not folder.stat().st_mode & stat.S_IXOTH:
            raise BuildError(
                f"{folder} is not traversable by other users: QEMU (libvirt-qemu) could not "
                f"open images under {cache_dir}; choose another ${CACHE_ENV}"
            )
    for folder in reversed(missing):
        folder.mkdir()
        folder.chmod(0o755)
    cache_dir.chmod(stat.S_IMODE(cache_dir.stat().st_mode) | 0o755)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the cache's build lock (an flock, released when the process dies); BuildError
    after ``wait`` seconds of another builder holding it."""
    with open(cache_dir / LOCK_NAME, "a") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"another build held {lock.name} for {wait:g} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_stale_builds(cache_dir: Path) -> None:
    """Remove the temporary folders of builds that died (only called under the lock)."""
    for stale in cache_dir.glob(".build-*"):
        mountpoint = stale / "mnt"
        if os.path.ismount(mountpoint):
            run(["umount", "-l", str(mountpoint)], timeout=60)
        log(f"removing {stale.name}, left by a build that did not finish")
        shutil.rmtree(stale, ignore_errors=True)


def publish(out: Path, final_dir: Path) -> None:
    """Move the finished folder into place atomically (QEMU must read the image)."""
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o644)
    if final_dir.exists():
        shutil.rmtree(final_dir)  # an entry without its image, left by hand: not valid
    out.rename(final_dir)


# --------------------------------------------------------------------------- the root tree


def bootstrap(root: Path, recipe: Recipe) -> None:
    """mmdebstrap the recipe's packages into the (not yet existing) folder ``root``."""
    if not is_installed("mmdebstrap"):
        raise BuildError("mmdebstrap is not installed (apt-get install -y mmdebstrap)")
    args = [
        "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
        "--aptopt=Acquire::Languages \"none\"", f"--include={','.join(recipe.packages)}",
        *(f"--dpkgopt={option}" for option in recipe.dpkg_options),
        *(f"--hook-dir={hooks}" for hooks in recipe.hook_dirs),
        recipe.suite, str(root), *recipe.mirrors,
    ]  # fmt: skip
    run(args, timeout=MMDEBSTRAP_TIMEOUT_S, env={**os.environ, "LC_ALL": "C.UTF-8"})


def overlay_files(root: Path, source_dir: Path = HERE) -> None:
    """Copy rootfs/ over the installed system (0755 for executables, else 0644)."""
    for source in sorted((source_dir / ROOTFS).rglob("*")):
        if source.is_file():
            mode = 0o755 if os.access(source, os.X_OK) else 0o644
            write_file(root / source.relative_to(source_dir / ROOTFS), source.read_bytes(), mode)


def write_boot_files(root: Path) -> None:
    """fstab and extlinux.conf. /vmlinuz and /initrd.img are the kernel package's own links
    to the newest kernel, so a kernel upgrade inside a VM boots the new one."""
    write_file(root / "etc/fstab", f"LABEL={FS_LABEL} / ext4 rw,discard,errors=remount-ro 0 1\n")
    write_file(
        root / "boot/extlinux/extlinux.conf",
        "SERIAL 0 115200\nDEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n"
        f"  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n",
    )


def reset_identity(root: Path) -> None:
    """Empty /etc/machine-id, remove SSH host keys and what the build left behind."""
    (root / "etc/machine-id").write_bytes(b"")
    for pattern in ("etc/ssh/ssh_host_*", *IDENTITY_FILES, *BUILD_LEFTOVERS):
        for path in root.glob(pattern):
            path.unlink()


def check_root(root: Path) -> str:
    """Refuse a tree that would not boot or would share an identity; return the kernel
    release that /vmlinuz points at."""
    if (root / "etc/machine-id").stat().st_size != 0:
        raise BuildError("/etc/machine-id is not empty")
    if list(root.glob("etc/ssh/ssh_host_*")):
        raise BuildError("SSH host keys are left in /etc/ssh")
    for link in ("vmlinuz", "initrd.img"):
        if not (root / link).is_file():
            raise BuildError(f"/{link} does not point at a file in the image")
    return (root / "vmlinuz").resolve().name.removeprefix("vmlinuz-")


def package_list(root: Path) -> tuple[str, dict[str, str]]:
    """The image's ``dpkg -l`` and {package: version}."""
    admindir = f"--admindir={root / 'var/lib/dpkg'}"
    env = {**os.environ, "COLUMNS": "200"}
    listing = run(["dpkg-query", admindir, "-l"], timeout=60, env=env)
    fields = run(["dpkg-query", admindir, "-W", "-f", "${Package}\t${Version}\n"], timeout=60)
    return listing, dict(line.split("\t", 1) for line in fields.splitlines() if "\t" in line)


# --------------------------------------------------------------------------- the disk


def tree_bytes(root: Path) -> int:
    """Bytes the tree takes in 4 KiB blocks (hard links counted once)."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        info = path.lstat()
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += max(4096, -(-info.st_size // 4096) * 4096)
    return total


def make_filesystem(root: Path, raw: Path) -> None:
    """A whole-disk ext4 of DISK_SIZE filled from ``root`` without mounting. No 64bit and no
    metadata_csum: extlinux 6.04 boots from ext4 only without them."""
    if tree_bytes(root) > DISK_SIZE * 3 // 4:
        raise BuildError(f"the root tree does not fit a {DISK_SIZE // MIB} MiB disk")
    run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^64bit,^metadata_csum", "-L", FS_LABEL,
         "-d", str(root), str(raw), f"{DISK_SIZE // 1024}k"],
        timeout=600,
    )  # fmt: skip
    run(["e2fsck", "-f", "-n", str(raw)], timeout=600)


def convert_to_qcow2(raw: Path, dest: Path) -> None:
    run(["qemu-img", "convert", *(["-c"] if COMPRESS else []), "-O", "qcow2", str(raw),
         str(dest)], timeout=900)  # fmt: skip


# --------------------------------------------------------------------------- the build


def timed(step: str, started: float) -> float:
    now = time.monotonic()
    log(f"{step} in {now - started:.1f} s")
    return now


def build_into(workdir: Path, out: Path, recipe: Recipe) -> dict[str, object]:
    """Build the image, packages.txt and image.json into ``out`` (inside ``workdir``)."""
    started = mark = time.monotonic()
    root = workdir / "root"
    bootstrap(root, recipe)
    mark = timed("packages installed (mmdebstrap)", mark)
    overlay_files(root)
    write_boot_files(root)
    reset_identity(root)
    kernel = check_root(root)
    listing, versions = package_list(root)
    raw = workdir / "disk.raw"
    make_filesystem(root, raw)
    install_bootloader(raw, workdir)
    mark = timed("file system made and extlinux installed", mark)
    out.mkdir()
    convert_to_qcow2(raw, out / IMAGE_NAME)
    timed("converted to qcow2", mark)
    write_file(out / PACKAGES_NAME, listing)
    info = {
        "key": recipe.key(),
        "image": IMAGE_NAME,
        "virtual_size": DISK_SIZE,
        "file_size": (out / IMAGE_NAME).stat().st_size,
        "compressed": COMPRESS,
        "fs_label": FS_LABEL,
        "kernel": kernel,
        "kernel_cmdline": KERNEL_CMDLINE,
        "default_user": DEFAULT_USER,
        "packages": versions,
        "build_seconds": round(time.monotonic() - started, 1),
        "recipe": asdict(recipe),
    }
    write_file(out / INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def build_image(cache_dir: Path | None = None) -> Path:
    """Return the path of the image of the current recipe, building it first unless cached.

    Raises BuildError when a step fails (nothing is left in the cache then) or when building
    is needed without root."""
    cache_dir = Path(cache_dir or default_cache_dir()).resolve()
    recipe = load_recipe()
    final_dir = entry_dir(cache_dir, recipe)
    if (final_dir / IMAGE_NAME).is_file():
        return final_dir / IMAGE_NAME
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mmdebstrap --mode=root, a loop mount)")
    prepare_cache_dir(cache_dir)
    with cache_lock(cache_dir):
        if (final_dir / IMAGE_NAME).is_file():  # built by the holder we waited for
            return final_dir / IMAGE_NAME
        remove_stale_builds(cache_dir)
        log(f"building {final_dir.name} into {cache_dir}")
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cache_dir) as tmp:
            info = build_into(Path(tmp), Path(tmp) / "out", recipe)
            publish(Path(tmp) / "out", final_dir)
    log(f"built {info['file_size'] // MIB} MiB in {info['build_seconds']} s")
    return final_dir / IMAGE_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    parser.add_argument("--key", action="store_true", help="print the recipe's key, build nothing")
    args = parser.parse_args(argv)
    if args.key:
        print(load_recipe().key())
        return 0
    try:
        path = build_image(args.cache_dir)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
