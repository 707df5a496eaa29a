"""disks.py against the real qemu-img, on temporary files."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from ruddervirt.hypervisor import disks
from ruddervirt.proc import CommandFailed, run

MIB = 1024 * 1024


def write_pattern(path: Path, pattern: int, offset: int = 0, fmt: str = "qcow2") -> None:
    """Write 64 KiB of ``pattern`` bytes at ``offset`` through qemu-io (honours backing files)."""
    run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} 64k", path], timeout=30)


def same_contents(a: Path, b: Path, fmt_a: str = "qcow2", fmt_b: str = "qcow2") -> bool:
    try:
        run(["qemu-img", "compare", "-q", "-f", fmt_a, "-F", fmt_b, a, b], timeout=60)
    except CommandFailed:
        return False
    return True


def test_create_blank_makes_a_qcow2_of_the_given_size(tmp_path: Path) -> None:
    path = tmp_path / "blank.qcow2"
    disks.create_blank(path, 64 * MIB)
    info = disks.info(path, fmt="qcow2")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * MIB
    assert "backing-filename" not in info


def test_create_blank_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "blank.qcow2"
    disks.create_blank(path, MIB)
    with pytest.raises(disks.DiskError, match="exists"):
        disks.create_blank(path, MIB)


def test_overlay_records_its_base_as_absolute_backing_file(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    disks.create_blank(base, 32 * MIB)
    disks.create_overlay(base, top, "qcow2")
    info = disks.info(top, fmt="qcow2")
    assert info["backing-filename"] == str(base.resolve())
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 32 * MIB
    chain = disks.backing_chain(top)
    assert [Path(image["filename"]).name for image in chain] == ["top.qcow2", "base.qcow2"]


def test_overlay_can_be_larger_than_its_base(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    disks.create_blank(base, 32 * MIB)
    disks.create_overlay(base, top, "qcow2", size=64 * MIB)
    assert disks.virtual_size(top, fmt="qcow2") == 64 * MIB


def test_overlay_of_missing_base_is_refused(tmp_path: Path) -> None:
    with pytest.raises(disks.DiskError, match="does not exist"):
        disks.create_overlay(tmp_path / "nope.qcow2", tmp_path / "top.qcow2", "qcow2")


def test_resize_grows_and_equal_size_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    disks.create_blank(path, 32 * MIB)
    disks.resize(path, 96 * MIB)
    assert disks.virtual_size(path, fmt="qcow2") == 96 * MIB
    disks.resize(path, 96 * MIB)
    assert disks.virtual_size(path, fmt="qcow2") == 96 * MIB


def test_resize_refuses_to_shrink(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    disks.create_blank(path, 64 * MIB)
    with pytest.raises(disks.DiskError, match="shrink"):
        disks.resize(path, 32 * MIB)
    assert disks.virtual_size(path, fmt="qcow2") == 64 * MIB


def test_convert_flattens_the_backing_chain_keeping_all_data(tmp_path: Path) -> None:
    base, top, flat = tmp_path / "base.qcow2", tmp_path / "top.qcow2", tmp_path / "flat.qcow2"
    disks.create_blank(base, 16 * MIB)
    write_pattern(base, 0xAB, 0)
    disks.create_overlay(base, top, "qcow2")
    write_pattern(top, 0xCD, 1 * MIB)
    disks.convert(top, flat)
    info = disks.info(flat, fmt="qcow2")
    assert "backing-filename" not in info
    assert info["format"] == "qcow2"
    assert same_contents(top, flat)
    assert not same_contents(base, flat)  # the overlay's own writes made it into the copy
    assert not (tmp_path / "flat.qcow2.partial").exists()


def test_convert_with_compression_keeps_contents(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.qcow2", tmp_path / "small.qcow2"
    disks.create_blank(src, 16 * MIB)
    write_pattern(src, 0x11)
    disks.convert(src, dest, compress=True)
    assert same_contents(src, dest)


def test_failed_convert_leaves_neither_destination_nor_partial(tmp_path: Path) -> None:
    dest = tmp_path / "out.qcow2"
    with pytest.raises(CommandFailed, match="qemu-img"):
        disks.convert(tmp_path / "missing.qcow2", dest)
    assert list(tmp_path.iterdir()) == []


def test_copy_full_keeps_the_format_and_drops_the_backing_file(tmp_path: Path) -> None:
    raw, copy = tmp_path / "disk.raw", tmp_path / "copy.raw"
    disks.create_blank(raw, 8 * MIB, fmt="raw")
    write_pattern(raw, 0x42, fmt="raw")
    disks.copy_full(raw, copy, src_format="raw")
    assert disks.info(copy, fmt="raw")["format"] == "raw"
    assert same_contents(raw, copy, "raw", "raw")
    base, top, full = tmp_path / "b.qcow2", tmp_path / "t.qcow2", tmp_path / "full.qcow2"
    disks.create_blank(base, 8 * MIB)
    disks.create_overlay(base, top, "qcow2")
    disks.copy_full(top, full)
    assert "backing-filename" not in disks.info(full, fmt="qcow2")


@pytest.fixture
def qemu_user() -> str:
    try:
        return pwd.getpwnam(disks.QEMU_USER).pw_name
    except KeyError:
        pytest.skip(f"no {disks.QEMU_USER} user on this machine")


def test_reachability_check_names_the_folder_qemu_cannot_enter(
    qemu_dir: Path, qemu_user: str
) -> None:
    closed = qemu_dir / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    with pytest.raises(disks.DiskError, match=f"{closed} is not traversable"):
        disks.check_qemu_can_reach(closed / "inner" / "disk.qcow2", qemu_user)


def test_reachability_check_accepts_traversable_folders(qemu_dir: Path, qemu_user: str) -> None:
    disks.check_qemu_can_reach(qemu_dir / "disk.qcow2", qemu_user)
