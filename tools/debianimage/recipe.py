"""What the Debian 12 test image is made of, and the content key that names its cache entry.

The recipe is the Debian suite and mirrors, the packages, the dpkg path filters, the files of
``rootfs/`` laid over the installed system, and the builder's own source (every other file in
this folder except README.md). :func:`load_recipe` reads it; :meth:`Recipe.key` hashes it.
Package *versions* are not part of the key: they come from the archive at build time and are
recorded next to the image (``packages.txt``), so an archive update never rebuilds by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOTFS = "rootfs"  # the folder of files laid over the installed system
NOT_INPUTS = frozenset({"README.md"})

SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# On top of mmdebstrap's "apt" variant (the Essential:yes packages and apt). Recommends are
# not installed. What Debian's genericcloud image has that matters to a VM in a lab.
PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "zstd",  # the cloud kernel; zstd initramfs
    "systemd-sysv", "udev", "dbus", "kmod", "e2fsprogs", "procps",  # dbus: logind, the power key
    "cloud-init", "openssh-server", "openssh-sftp-server", "sudo", "python3",
    "qemu-guest-agent",
    "ifupdown", "isc-dhcp-client", "netbase", "iproute2", "iputils-ping",
)  # fmt: skip
# Left out of the image (and out of packages installed later): manuals, documentation except
# licences, translations. Kept: locales' data (cloud-init's `locale:` runs locale-gen).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
)
# mmdebstrap's hook that merges /usr with symlinks and installs usr-is-merged, so that apt does
# not pull in usrmerge and, with it, all of perl (50 MiB).
HOOK_DIRS = ("/usr/share/mmdebstrap/hooks/merged-usr",)


@dataclass(frozen=True)
class Recipe:
    """Everything the image is built from. ``files`` and ``sources`` map a path relative to
    this folder to ``x`` or ``-`` (executable or not) followed by the file's sha256."""

    suite: str
    mirrors: tuple[str, ...]
    packages: tuple[str, ...]
    dpkg_options: tuple[str, ...]
    hook_dirs: tuple[str, ...]
    files: Mapping[str, str]
    sources: Mapping[str, str]

    def key(self) -> str:
        """16 hex digits that change whenever any part of the recipe does, and only then."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """``x`` or ``-`` (the owner's execute bit) then the sha256 of the contents."""
    executable = "x" if os.access(path, os.X_OK) else "-"
    return executable + hashlib.sha256(path.read_bytes()).hexdigest()


def input_files(source_dir: Path) -> list[Path]:
    """Every file of ``source_dir`` that shapes the image: not README.md, not bytecode."""
    return sorted(
        path
        for path in source_dir.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.relative_to(source_dir).parts
        and path.name not in NOT_INPUTS
    )


def load_recipe(source_dir: Path = HERE) -> Recipe:
    """The recipe of the builder in ``source_dir`` (this folder unless a test passes a copy)."""
    files: dict[str, str] = {}
    sources: dict[str, str] = {}
    for path in input_files(source_dir):
        rel = path.relative_to(source_dir)
        target = files if rel.parts[0] == ROOTFS else sources
        target[rel.as_posix()] = file_digest(path)
    return Recipe(
        suite=SUITE,
        mirrors=MIRRORS,
        packages=PACKAGES,
        dpkg_options=DPKG_OPTIONS,
        hook_dirs=HOOK_DIRS,
        files=files,
        sources=sources,
    )
