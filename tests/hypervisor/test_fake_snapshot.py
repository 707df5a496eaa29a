"""FakeHypervisor.snapshot_disks: what the step cache's checkpoints ask of a hypervisor."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruddervirt.hypervisor.driver import InvalidState
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.fake_images import FakeImages
from ruddervirt.hypervisor.specs import DiskSpec, DomainSpec


@pytest.fixture
def running(tmp_path: Path) -> tuple[FakeHypervisor, Path]:
    hv = FakeHypervisor(name_prefix="rvt-")
    disk = tmp_path / "root.qcow2"
    FakeImages().create_blank(disk, 1 << 20)
    spec = DomainSpec(
        name="rvt-a", vcpus=1, memory_bytes=1 << 28, domain_type="qemu",
        disks=(DiskSpec(path=disk, target_bus="virtio"),),
    )  # fmt: skip
    hv.define(spec)
    hv.start("rvt-a")
    return hv, disk


def test_a_snapshot_makes_an_overlay_on_the_current_disk_and_can_be_taken_again(
    running, tmp_path
) -> None:
    hv, disk = running
    hv.snapshot_disks("rvt-a", {disk: tmp_path / "one.qcow2"})
    hv.snapshot_disks("rvt-a", {tmp_path / "one.qcow2": tmp_path / "two.qcow2"})
    assert FakeImages._record(tmp_path / "two.qcow2")["backing"] == str(tmp_path / "one.qcow2")
    assert len(hv.snapshots) == 2


def test_a_snapshot_of_a_file_that_is_not_a_disk_or_of_a_stopped_domain_is_refused(
    running, tmp_path
) -> None:
    hv, disk = running
    with pytest.raises(ValueError, match="has no disk"):
        hv.snapshot_disks("rvt-a", {tmp_path / "other.qcow2": tmp_path / "x.qcow2"})
    hv.destroy("rvt-a")
    with pytest.raises(InvalidState):
        hv.snapshot_disks("rvt-a", {disk: tmp_path / "y.qcow2"})
