"""Floppy images made from named files (mkfs.fat + mtools, no mounting)."""

from __future__ import annotations

import pytest

from ruddervirt.hypervisor.floppy import (
    FloppyError,
    list_floppy,
    make_floppy,
    read_floppy_file,
)


def test_files_land_on_the_floppy_under_their_own_names(tmp_path):
    unattend = tmp_path / "unattend.xml"
    unattend.write_bytes(b"<unattend/>\n")
    image = make_floppy(
        tmp_path / "floppy.img", {"Autounattend.xml": unattend, "answers": b"hostname=web\n"}
    )
    assert image.stat().st_size == 1440 * 1024
    assert list_floppy(image) == ["Autounattend.xml", "answers"]
    assert read_floppy_file(image, "Autounattend.xml") == b"<unattend/>\n"
    assert read_floppy_file(image, "answers") == b"hostname=web\n"


def test_files_too_large_for_1_44_mb_get_a_2_88_mb_floppy(tmp_path):
    image = make_floppy(tmp_path / "f.img", {"big.bin": b"x" * 2_000_000})
    assert image.stat().st_size == 2880 * 1024
    assert read_floppy_file(image, "big.bin") == b"x" * 2_000_000


def test_files_larger_than_any_floppy_are_refused(tmp_path):
    with pytest.raises(FloppyError, match="httpDirectory"):
        make_floppy(tmp_path / "f.img", {"huge.bin": b"x" * 3_000_000})
    assert not (tmp_path / "f.img").exists()


@pytest.mark.parametrize("names", [["a/b"], [".hidden"], ["Answers", "answers"]])
def test_names_fat_cannot_hold_are_refused(tmp_path, names):
    with pytest.raises(FloppyError):
        make_floppy(tmp_path / "f.img", {n: b"x" for n in names})


def test_an_existing_image_is_replaced(tmp_path):
    make_floppy(tmp_path / "f.img", {"old": b"1"})
    make_floppy(tmp_path / "f.img", {"new": b"2"})
    assert list_floppy(tmp_path / "f.img") == ["new"]
