"""The step-cache benchmark's pieces that need no VM: the two manifests it builds and the
phase cut of a rebuild (bench/rebuild_bench.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.build_phases import GENERALIZING
from bench.build_recipe import TINY, Recipe, manifest_text
from bench.build_timing import Event
from bench.rebuild_bench import (
    ROWS,
    rebuild_phases,
    with_first_step_marker,
    with_last_step_changed,
)
from ruddervirt.engine.stepkey import file_hasher, vm_keys
from ruddervirt.manifest import parse


def recipe(tmp_path: Path) -> Recipe:
    image, blob = tmp_path / "tiny.qcow2", tmp_path / "blob.bin"
    return Recipe(TINY, image, "cd" * 32, blob, "ab" * 32, tmp_path / "key", "ssh-ed25519 AAAA")


def keys(text: str) -> list[str | None]:
    manifest = parse(text).for_build()
    hashed = file_hasher(manifest, lambda name: b"fetched " + name.encode())
    return [
        step.key for step in vm_keys(manifest.vms[0], manifest, hashed, allow_internet=False).steps
    ]


def test_each_run_builds_a_manifest_of_its_own_and_the_rebuild_changes_only_the_last_step(
    tmp_path: Path,
):
    base = manifest_text(recipe(tmp_path))
    one, two = with_first_step_marker(base, 1), with_first_step_marker(base, 2)
    changed = with_last_step_changed(one)
    assert "echo rebuild-bench-run-1" in one and "echo rebuild-bench-run-2" in two
    assert "the last step, changed" in changed
    k_one, k_two, k_changed = keys(one), keys(two), keys(changed)
    assert None not in k_one  # every step of the recipe is cacheable
    assert k_one[0] != k_two[0]  # run 2 reuses nothing of run 1
    assert k_changed[:2] == k_one[:2] and k_changed[2] != k_one[2]


def ev(t: float, kind: str, text: str) -> Event:
    return Event(t, kind, "bench", text)


def test_rebuild_phases_add_up_and_split_what_is_beyond_the_step():
    events = [
        ev(1.0, "vm_domain", "rvt-bench"),
        ev(9.0, "log", "SSH is up after 8.0s"),
        ev(9.1, "step_started", "2"),
        ev(9.4, "step_finished", "2"),
        ev(9.5, "log", GENERALIZING),
        ev(9.6, "vm_phase", "ShuttingDown"),
        ev(13.0, "log", "the guest powered off"),
    ]
    figures = rebuild_phases(events, start=0.5, end=13.2)
    assert figures["rebuild"] == pytest.approx(12.7)
    assert figures["step"] == pytest.approx(0.3)
    assert figures["generalize"] == pytest.approx(0.1)  # the last step ended first
    assert figures["shutdown"] == pytest.approx(3.4)
    # Engine work: all but the step, the boot, generalizing and the shutdown, including the
    # 0.1 s between the step's end and generalizing.
    assert figures["engine"] == pytest.approx(
        figures["prepare"] + figures["handover"] + 0.1 + figures["capture"]
    )
    assert figures["beyond"] == pytest.approx(figures["rebuild"] - 0.3)
    assert {key for key, _ in ROWS} - {"full", "saved"} == set(figures)
