"""A build VM's boot disk from a downloaded image is its own standalone copy: never an overlay
of the cached download, so neither the VM nor the template captured from it depends on it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from ruddervirt.engine import cleanup
from ruddervirt.engine.config import EngineConfig, FetchPolicy
from ruddervirt.engine.context import BuildContext, BuildScope, VMPlan
from ruddervirt.engine.errors import SourceError
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.engine.topology import plan
from ruddervirt.engine.vm import VMRunner
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.fake_images import FakeImages
from ruddervirt.hypervisor.images import Images, QemuImages
from ruddervirt.manifest import parse

MIB = 1024 * 1024


def qemu_img(*args: str | Path) -> str:
    done = subprocess.run(
        ["qemu-img", *map(str, args)], check=True, timeout=60, capture_output=True, text=True
    )
    return done.stdout


def runner_for(
    image: Path, tmp_path: Path, *, disk_size: str = "8Mi", images: Images | None = None
) -> VMRunner:
    """A runner whose disks come from ``image``, made by ``images`` (default: real qemu-img)."""
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    text = f"""\
vms:
  - name: web
    source: {{url: "{image.as_uri()}", checksum: "sha256:{digest}"}}
    disks: [{{name: root, size: {disk_size}}}]
"""
    manifest = parse(text).for_build()
    hv = FakeHypervisor(name_prefix="rvt-")
    topology = plan(manifest, owner="b1", prefix="rvt-", allow_internet=False)
    cleanup.create_networks(hv, topology.networks)
    config = EngineConfig(
        storage_root=tmp_path / "storage", domain_type="qemu", name_prefix="rvt-",
        fetch_policy=FetchPolicy(file_source_dirs=(image.parent,)),
    )  # fmt: skip
    ctx = BuildContext(config=config, hv=hv, reporter=NullReporter(), images=images or QemuImages())
    scope = BuildScope(
        key="b1", workdir=tmp_path / "work", manifest=manifest,
        files=FileStore(manifest.files, config.files_cache_dir, policy=config.fetch_policy),
        deadline=time.monotonic() + 600, metadata={},
    )  # fmt: skip
    runner = VMRunner(ctx, scope, VMPlan(vm=manifest.vms[0], nics=topology.nics["web"]))
    runner.dir.mkdir(parents=True)
    return runner


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_the_boot_disk_is_a_standalone_copy_of_the_downloaded_image(tmp_path, fmt):
    source = tmp_path / "images" / f"base.{fmt}"
    source.parent.mkdir()
    qemu_img("create", "-q", "-f", fmt, source, "4M")
    runner = runner_for(source, tmp_path)
    [disk] = runner.prepare_disks()
    info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2", disk.path))
    assert "backing-filename" not in info and "full-backing-filename" not in info
    assert info["virtual-size"] == 8 * MIB  # grown to the declared size
    cached = list((tmp_path / "storage/cache/images").glob("[0-9a-f]*"))
    assert len(cached) == 1 and not cached[0].samefile(disk.path)
    cached[0].unlink()  # the build VM keeps working without the cache entry
    assert json.loads(qemu_img("info", "--output=json", "-f", "qcow2", disk.path))


def test_a_source_with_a_backing_file_fails_before_any_disk_is_made(tmp_path):
    source = tmp_path / "images" / "evil.qcow2"
    source.parent.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", source, "4M")
    runner = runner_for(source, tmp_path)
    with pytest.raises(SourceError, match=r"has a backing file \('/etc/shadow'\)"):
        runner.prepare_disks()
    assert list(runner.dir.iterdir()) == []


def test_the_source_is_imported_through_the_contexts_images_in_the_format_checked(tmp_path):
    source = tmp_path / "images" / "base.raw"
    source.parent.mkdir()
    source.write_bytes(b"\0" * 4 * MIB)  # no magic: checked as raw
    images = FakeImages()
    runner = runner_for(source, tmp_path, images=images)
    [disk] = runner.prepare_disks()
    assert images.made == [disk.path]
    record = json.loads(disk.path.read_text())
    assert (record["format"], record["backing"]) == ("qcow2", None)
    assert images.virtual_size(disk.path, fmt="qcow2") == 8 * MIB  # converted, then grown
