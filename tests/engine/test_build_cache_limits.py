"""The step cache's limits in builds on fakes: a build's checkpoints of a VM stay within
the VM's disk sizes, and a reused guest whose earlier builds' keys cannot be removed fails
the build."""

from __future__ import annotations

import pytest

from ruddervirt.engine.errors import BuildError
from ruddervirt.engine.stepcache import StepCache
from ruddervirt.guest import fake
from tests.engine.buildkit import FakeBuild, manifest_text, vm_yaml
from tests.engine.test_build_cache import STEPS, checkpointed

SMALL = "    disks: [{name: root, size: 1Mi}]\n"


def store(build: FakeBuild) -> StepCache:
    return StepCache(build.config().step_cache_dir)


def grow_layers(build: FakeBuild, size: int) -> None:
    """What a step writing ``size`` bytes does to the layer the guest writes (a fake image
    is JSON: trailing spaces keep it readable and take real blocks)."""
    for path in store(build).layers.glob(f"{build.key}-web-*"):
        with path.open("ab") as stream:
            stream.write(b" " * size)


def test_a_vm_takes_no_more_checkpoints_once_they_exceed_its_disk_sizes(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    build.script(
        "web",
        fake.run("echo one"),
        fake.run("sync"),
        fake.run("echo two", then=lambda: grow_layers(build, 2 * 2**20)),
        fake.run("echo three"),
    )
    build.run(manifest_text(vm_yaml("web", STEPS, extra=SMALL)), use_cache=True, build_id=1)
    assert [r.step_name for r in store(build).records()] == ["one"]
    assert len(build.hv.snapshots) == 1
    lines = [line for line in build.reporter.text() if "no more checkpoints" in line]
    assert len(lines) == 1 and "over the budget of 1048576" in lines[0]
    build.guests["web"].assert_done()


def test_a_reused_guest_whose_old_build_keys_cannot_be_removed_fails_the_build(tmp_path) -> None:
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "echo three"))
    first.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=1)
    second = FakeBuild(tmp_path, key="b2")
    second.script("web", fake.run("ruddervirt-build-b1", exit_status=1), fails=True)
    with pytest.raises(BuildError, match="could not remove earlier builds' SSH keys"):
        second.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=2)
