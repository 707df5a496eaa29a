"""Crafted source images: a qcow2 whose backing file is a host path or a `json:` URL, or with
an external data file, is refused before qemu-img opens it; plain qcow2 and raw are taken."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ruddervirt.engine.errors import SourceError
from ruddervirt.engine.sources import fetch_image
from ruddervirt.fetchpolicy import FetchPolicy
from ruddervirt.hypervisor import disks, image_check
from ruddervirt.hypervisor.image_check import ImageRefused, check_image, detect_format

MIB = 1024 * 1024
JSON_BACKING = "json:" + json.dumps(
    {"driver": "raw", "file": {"driver": "file", "filename": "/etc/shadow"}}
)


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, timeout=60, capture_output=True)


def crafted(folder: Path, name: str, *options: str) -> Path:
    """A 1 MiB qcow2 made with `options` (-u: qemu-img does not open the backing file)."""
    path = folder / name
    qemu_img("create", "-q", "-f", "qcow2", "-u", *options, path, "1M")
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "images"
    path.mkdir()
    return path


@pytest.fixture
def qemu_img_calls(monkeypatch) -> list[list[str]]:
    """Every qemu-img command image_check runs (still run for real)."""
    calls: list[list[str]] = []
    real = disks.run

    def recording(args, **kwargs):
        calls.append([str(a) for a in args])
        return real(args, **kwargs)

    monkeypatch.setattr(disks, "run", recording)
    return calls


def test_a_qcow2_backed_by_a_host_file_is_refused_before_qemu_img_opens_it(folder, qemu_img_calls):
    image = crafted(folder, "evil.qcow2", "-b", "/etc/shadow", "-F", "raw")
    with pytest.raises(ImageRefused, match=r"has a backing file \('/etc/shadow'\)"):
        check_image(image)
    assert qemu_img_calls == []


def test_a_qcow2_with_a_json_backing_is_refused(folder, qemu_img_calls):
    image = crafted(folder, "json.qcow2", "-b", JSON_BACKING, "-F", "raw")
    with pytest.raises(ImageRefused, match=r"has a backing file \('json:"):
        check_image(image)
    assert qemu_img_calls == []


def test_a_qcow2_with_an_external_data_file_is_refused(folder, qemu_img_calls):
    image = crafted(folder, "data.qcow2", "-o", f"data_file={folder / 'data.raw'}")
    with pytest.raises(ImageRefused, match="external data file"):
        check_image(image)
    assert qemu_img_calls == []


def test_a_raw_image_is_accepted_as_raw(folder):
    image = folder / "disk.raw"
    image.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (2 * MIB - 512))
    found = check_image(image)
    assert (found.format, found.virtual_size) == ("raw", 2 * MIB)


def test_a_standalone_qcow2_is_accepted_with_its_format_declared_to_qemu_img(
    folder, qemu_img_calls
):
    image = folder / "plain.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "3M")
    found = check_image(image)
    assert (found.format, found.virtual_size) == ("qcow2", 3 * MIB)
    assert all(call[call.index("-f") + 1] == "qcow2" for call in qemu_img_calls)


def test_other_image_formats_are_refused(folder):
    image = folder / "disk.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", image, "1M")
    with pytest.raises(ImageRefused, match="vmdk image; only qcow2 and raw"):
        detect_format(image)


def test_a_json_reference_reported_by_qemu_img_is_refused(folder, monkeypatch):
    """The second line of defence: whatever the header parser missed, qemu-img's report
    must not mention a backing file, a data file or a json: URL."""
    image = folder / "plain.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    report = {"format": "qcow2", "virtual-size": MIB, "children": [{"x": JSON_BACKING}]}
    monkeypatch.setattr(image_check, "info", lambda path, fmt: report)
    with pytest.raises(ImageRefused, match="refers to 'json:"):
        check_image(image)


def test_a_refused_source_image_fails_the_fetch_and_leaves_nothing_cached(tmp_path, folder):
    image = crafted(folder, "evil.qcow2", "-b", "/etc/shadow", "-F", "raw")
    cache = tmp_path / "cache"
    policy = FetchPolicy(file_source_dirs=(folder,))
    with pytest.raises(SourceError) as error:
        fetch_image(image.as_uri(), None, cache, policy=policy)
    assert f"source image {image.as_uri()} refused: it has a backing file" in str(error.value)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []
