"""The image build: caching by hash, the CLI, and what ends up inside the image (read with
debugfs and cpio on the host; booting it is test_boot.py's job)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.testimage.guestvm import cached_image, image_info
from tools.testimage import build

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building the image needs root")


def sh(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached image converted to a raw file system."""
    raw = tmp_path_factory.mktemp("raw") / "disk.raw"
    sh("qemu-img", "convert", "-O", "raw", str(cached_image()), str(raw))
    return raw


def debugfs(raw: Path, request: str) -> str:
    return sh("debugfs", "-R", request, str(raw)).decode()


def exists(raw: Path, path: str) -> bool:
    """debugfs says "File not found" on stderr (and exits 0) for a missing path."""
    done = subprocess.run(
        ["debugfs", "-R", f"stat {path}", str(raw)], capture_output=True, text=True, timeout=60
    )
    return "File not found" not in done.stderr


def test_a_second_build_returns_the_cached_image_at_once() -> None:
    first = cached_image()
    started = time.monotonic()
    again = cached_image()
    assert again == first
    assert time.monotonic() - started < 5
    assert len(first.parent.name) == 16 and first.name == "tiny.qcow2"
    info = json.loads(sh("qemu-img", "info", "--output=json", str(first)))
    assert info["format"] == "qcow2"
    assert 40 * 2**20 <= info["virtual-size"] <= 96 * 2**20


def test_the_cli_prints_the_image_path_last() -> None:
    image = cached_image()
    flavor = image_info(image)["inputs"]["kernel"]["flavor"]
    script = str(ROOT / "tools/testimage/build.py")
    out = sh(sys.executable, script, "--out-dir", str(image.parents[1]), "--kernel", flavor)
    assert out.decode().splitlines()[-1] == str(image)


def test_the_hash_follows_the_helper_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = build.find_kernel("auto")
    before = build.inputs_hash(build.describe_inputs(kernel, []))
    copy = tmp_path / "testimage"
    shutil.copytree(build.HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "HERE", copy)
    assert build.inputs_hash(build.describe_inputs(kernel, [])) == before
    (copy / "README.md").write_text("documentation does not change the image\n")
    assert build.inputs_hash(build.describe_inputs(kernel, [])) == before
    (copy / "guest/etc/hostname").write_text("changed\n")
    assert build.inputs_hash(build.describe_inputs(kernel, [])) != before


def test_image_info_lists_what_the_kernel_can_drive() -> None:
    info = image_info(cached_image())
    assert "virtio_net" in info["modules"] and "virtio_blk" in info["modules"]
    assert "virtio" in info["nic_models"] and "virtio" in info["disk_buses"]
    if info["inputs"]["kernel"]["flavor"] == "generic":
        assert info["nic_models"] == ["virtio", "e1000", "e1000e", "rtl8139"]
        assert info["modules_missing"] == []


def test_root_file_system_has_ssh_sudo_and_no_bash(raw_image: Path) -> None:
    for path in (
        "/usr/sbin/dropbear",
        "/usr/lib/sftp-server",
        "/usr/bin/sudo",
        "/bin/busybox",
        "/boot/vmlinuz",
        "/boot/initrd.img",
        "/boot/extlinux/ldlinux.sys",
    ):
        assert "Type: regular" in debugfs(raw_image, f"stat {path}"), path
    assert not exists(raw_image, "/bin/bash")
    assert not exists(raw_image, "/usr/bin/bash")
    sudo_busybox = debugfs(raw_image, "stat /usr/libexec/busybox-sudo")
    assert "Mode:  04750" in sudo_busybox and "Group:    27" in sudo_busybox
    assert "Mode:  0600" in debugfs(raw_image, "stat /etc/busybox.conf")


def test_root_password_is_rudder(raw_image: Path) -> None:
    shadow = debugfs(raw_image, "cat /etc/shadow")
    stored = shadow.splitlines()[0].split(":")[1]
    salt = stored.split("$")[2]
    assert sh("busybox", "mkpasswd", "-m", "sha512", "rudder", salt).decode().strip() == stored


def test_extlinux_is_in_the_boot_sector(raw_image: Path) -> None:
    with raw_image.open("rb") as disk:
        sector = disk.read(512)
    assert sector[510:512] == b"\x55\xaa"
    assert b"EXTLINUX" in sector or b"SYSLINUX" in sector


def test_initramfs_has_init_busybox_and_the_modules(raw_image: Path, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    debugfs(raw_image, f"dump /boot/initrd.img {initrd}")
    names = sh("cpio", "-t", "--quiet", stdin=gzip.decompress(initrd.read_bytes())).decode().split()
    assert "init" in names and "dev/console" in names and "bin/sh" in names
    assert names.count("bin/busybox") == 1  # an applet link once overwrote it: no /init
    release = image_info(cached_image())["inputs"]["kernel"]["release"]
    modules = [n for n in names if n.startswith(f"lib/modules/{release}/") and n.endswith(".ko")]
    assert any(n.endswith("/virtio_blk.ko") for n in modules)
    assert f"lib/modules/{release}/modules.dep" in names
