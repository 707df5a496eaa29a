"""The step cache in builds on fakes: checkpoints after steps, the longest reused prefix,
the per-build off switch, a VM whose steps are not cacheable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ruddervirt.engine.errors import StepFailed
from ruddervirt.engine.stepcache import GRACE_S, StepCache
from ruddervirt.guest import fake
from tests.engine.buildkit import FakeBuild, manifest_text, vm_yaml


def shell(name: str, inline: str) -> str:
    return f"      - name: {name}\n        type: shell\n        shell: {{inline: {inline!r}}}\n"


STEPS = shell("one", "echo one") + shell("two", "echo two") + shell("three", "echo three")


def checkpointed(*commands: str) -> list[fake.Step]:
    """Each command, then the guest's sync before its checkpoint."""
    return [s for c in commands for s in (fake.run(c), fake.run("sync"))]


def store(build: FakeBuild) -> StepCache:
    return StepCache(build.config().step_cache_dir)


def test_a_cached_build_checkpoints_every_step_after_a_sync(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    guest = build.script("web", *checkpointed("echo one", "echo two", "echo three"))
    build.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=1)
    records = store(build).records()
    assert sorted(r.step_name for r in records) == ["one", "three", "two"]
    assert len(build.hv.snapshots) == 3
    runs = [c.what for c in guest.calls if c.op == "run"]
    assert runs.count("sync") == 3
    guest.assert_done()


def test_a_second_build_reuses_the_unchanged_steps_and_runs_only_the_changed_one(tmp_path) -> None:
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "exit 1"), fails=True)
    failing = shell("one", "echo one") + shell("two", "echo two") + shell("three", "exit 1")
    first.guests["web"].script[-2] = fake.run("exit 1", exit_status=1)  # the third step fails
    del first.guests["web"].script[-1]
    with pytest.raises(StepFailed):
        first.run(manifest_text(vm_yaml("web", failing)), use_cache=True, build_id=1)
    second = FakeBuild(tmp_path, key="b2")
    guest = second.script("web", fake.run("ruddervirt-build-b1"), *checkpointed("echo three"))
    second.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=2)
    reused = [e for e in second.reporter.events if e[0] == "reused"]
    assert reused == [("reused", "web", 0, 1), ("reused", "web", 1, 1)]
    assert [f[0] for f in second.reporter.finished()] == [2]  # only the third step ran
    assert not any("echo one" in c.what or b"echo one" in c.data for c in guest.calls)
    assert any("reused from build #1" in line for line in second.reporter.text())
    guest.assert_done()


def test_a_reused_vm_s_disks_are_overlays_on_the_checkpoint_never_the_checkpoint(tmp_path) -> None:
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "echo three"))
    first.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=1)
    last = max(store(first).records(), key=lambda r: r.step_index)
    checkpoint = store(first).top_layers(last)[0]
    before = checkpoint.read_bytes()
    second = FakeBuild(tmp_path, key="b2")
    overlays = []
    make = second.images.create_overlay
    second.images.create_overlay = lambda base, dest, *a, **kw: (  # type: ignore[method-assign]
        overlays.append((Path(base), Path(dest))),
        make(base, dest, *a, **kw),
    )
    second.script("web", fake.run("ruddervirt-build-b1"))
    second.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=2)
    assert [base for base, _dest in overlays] == [checkpoint]
    assert overlays[0][1] != checkpoint and checkpoint.read_bytes() == before
    assert [e[2] for e in second.reporter.events if e[0] == "reused"] == [0, 1, 2]
    assert second.reporter.finished() == []  # nothing ran


def test_use_cache_off_takes_no_checkpoint_and_reuses_nothing(tmp_path) -> None:
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "echo three"))
    first.run(manifest_text(vm_yaml("web", STEPS)), use_cache=True, build_id=1)
    second = FakeBuild(tmp_path, key="b2")
    second.script("web", fake.run("echo one"), fake.run("echo two"), fake.run("echo three"))
    second.run(manifest_text(vm_yaml("web", STEPS)), use_cache=False, build_id=2)
    assert not [e for e in second.reporter.events if e[0] == "reused"]
    assert second.hv.snapshots == []
    second.guests["web"].assert_done()


def test_another_instructor_s_identical_manifest_never_reuses_a_checkpoint(tmp_path) -> None:
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "echo three"))
    text = manifest_text(vm_yaml("web", STEPS))
    first.run(text, use_cache=True, build_id=1, cache_scope="user-1")
    second = FakeBuild(tmp_path, key="b2")
    second.script("web", *checkpointed("echo one", "echo two", "echo three"))
    second.run(text, use_cache=True, build_id=2, cache_scope="user-2")
    assert not [e for e in second.reporter.events if e[0] == "reused"]
    assert not any("build #1" in line for line in second.reporter.text())
    second.guests["web"].assert_done()


def test_a_handbuild_step_ends_the_cached_prefix(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    steps = (
        shell("one", "echo one") + "      - type: handbuild\n        handbuild: {instructions: x}\n"
    )
    build.reporter.decide("web", 1, "continue")
    build.script("web", *checkpointed("echo one"), fake.run("true"))
    build.run(manifest_text(vm_yaml("web", steps)), use_cache=True, build_id=1)
    assert [r.step_name for r in store(build).records()] == ["one"]
    assert any("not cached (a handbuild step" in line for line in build.reporter.text())


def test_a_failed_build_keeps_its_lease_and_a_link_to_each_working_disk(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    build.script("web", fake.run("exit 1", exit_status=1), fails=True)
    with pytest.raises(StepFailed):
        build.run(manifest_text(vm_yaml("web", shell("one", "exit 1"))), use_cache=True)
    link = tmp_path / "work" / "web" / "disk0-root.qcow2"
    assert link.is_symlink() and link.resolve().parent == store(build).layers
    assert (store(build).leases / "b1.json").exists()  # the kept disk is not collected
    assert store(build).collect(now=time.time() + GRACE_S + 1) == []
    store(build).release("b1")
    assert store(build).collect(now=time.time() + GRACE_S + 1) == [link.resolve().name]


def test_a_successful_build_releases_its_lease(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    build.script("web", *checkpointed("echo one"))
    build.run(manifest_text(vm_yaml("web", shell("one", "echo one"))), use_cache=True)
    assert list(store(build).leases.glob("*.json")) == []
    assert len(store(build).records()) == 1


def test_a_vm_started_from_a_checkpoint_does_not_get_its_boot_command_again(tmp_path) -> None:
    text = manifest_text(vm_yaml("web", STEPS, extra='    bootCommand: ["x<enter>"]\n'))
    first = FakeBuild(tmp_path)
    first.script("web", *checkpointed("echo one", "echo two", "echo three"))
    first.run(text, use_cache=True, build_id=1)
    assert first.hv.sent_keys.get(first.domain())  # typed in the first build
    second = FakeBuild(tmp_path, key="b2")
    second.script("web", fake.run("ruddervirt-build-b1"))
    second.run(text, use_cache=True, build_id=2)
    assert not second.hv.sent_keys.get(second.domain())
    assert any("not typing the bootCommand again" in line for line in second.reporter.text())
