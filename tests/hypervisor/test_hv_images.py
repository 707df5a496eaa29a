"""QemuImages (real qemu-img) and FakeImages keep the same contract: the same sizes, the same
refusals, the same errors for an image read in the wrong format."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ruddervirt.hypervisor.disks import DiskError
from ruddervirt.hypervisor.fake_images import FakeImages
from ruddervirt.hypervisor.images import Images, QemuImages
from ruddervirt.proc import CommandFailed

MIB = 1024 * 1024
IMPLEMENTATIONS = [QemuImages, FakeImages]
PROTOCOL_METHODS = sorted(
    name
    for name, value in vars(Images).items()
    if inspect.isfunction(value) and not name.startswith("_")
)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def images(request) -> Images:
    return request.param()


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_each_implementation_has_the_protocol_signature(cls: type, method: str) -> None:
    assert inspect.signature(getattr(cls, method)) == inspect.signature(getattr(Images, method))


def test_a_blank_image_has_the_size_asked_for(images: Images, tmp_path: Path) -> None:
    path = tmp_path / "blank.qcow2"
    images.create_blank(path, 4 * MIB)
    assert images.virtual_size(path, fmt="qcow2") == 4 * MIB
    with pytest.raises(DiskError, match="already exists"):
        images.create_blank(path, 4 * MIB)


def test_an_overlay_takes_its_base_size_or_a_larger_one(images: Images, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    images.create_blank(base, 4 * MIB)
    images.create_overlay(base, tmp_path / "same.qcow2", "qcow2")
    images.create_overlay(base, tmp_path / "grown.qcow2", "qcow2", size=8 * MIB)
    assert images.virtual_size(tmp_path / "same.qcow2", fmt="qcow2") == 4 * MIB
    assert images.virtual_size(tmp_path / "grown.qcow2", fmt="qcow2") == 8 * MIB
    with pytest.raises(DiskError, match="does not exist"):
        images.create_overlay(tmp_path / "missing.qcow2", tmp_path / "x.qcow2", "qcow2")


def test_resize_grows_and_never_shrinks(images: Images, tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    images.create_blank(path, 4 * MIB)
    images.resize(path, 4 * MIB)  # equal: nothing to do
    images.resize(path, 8 * MIB)
    assert images.virtual_size(path, fmt="qcow2") == 8 * MIB
    with pytest.raises(DiskError, match="refusing to shrink"):
        images.resize(path, 4 * MIB)


def test_convert_flattens_a_raw_file_into_a_standalone_qcow2(
    images: Images, tmp_path: Path
) -> None:
    raw = tmp_path / "source.raw"
    raw.write_bytes(b"\0" * MIB)
    dest = tmp_path / "copy.qcow2"
    images.convert(raw, dest, src_format="raw")
    assert images.virtual_size(dest, fmt="qcow2") == MIB
    assert images.virtual_size(raw, fmt="raw") == MIB
    with pytest.raises(DiskError, match="already exists"):
        images.convert(raw, dest, src_format="raw")


def test_a_file_read_as_qcow2_that_is_not_one_fails(images: Images, tmp_path: Path) -> None:
    raw = tmp_path / "plain.img"
    raw.write_bytes(b"\0" * MIB)
    with pytest.raises(CommandFailed, match="qcow2"):
        images.virtual_size(raw, fmt="qcow2")
