"""The Debian image's cache: its content key, the cache folder and the build lock (no build,
no network: booting the image is test_debian_boot.py's job)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.debianimage import build
from tools.debianimage.recipe import HERE, load_recipe


@pytest.fixture
def builder_copy(tmp_path: Path) -> Path:
    """A copy of tools/debianimage (as a fresh clone elsewhere would have it)."""
    copy = tmp_path / "elsewhere" / "debianimage"
    shutil.copytree(HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_key_is_the_same_for_the_same_recipe_in_another_checkout(builder_copy: Path) -> None:
    key = load_recipe().key()
    assert load_recipe().key() == key
    assert load_recipe(builder_copy).key() == key
    os.utime(builder_copy / "build.py", (0, 0))  # a fresh clone's mtimes differ
    (builder_copy / "__pycache__").mkdir()
    (builder_copy / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"bytecode")
    (builder_copy / "README.md").write_text("documentation does not change the image\n")
    assert load_recipe(builder_copy).key() == key


def test_the_key_changes_with_a_file_written_into_the_image(builder_copy: Path) -> None:
    key = load_recipe(builder_copy).key()
    config = builder_copy / "rootfs/etc/cloud/cloud.cfg.d/90_ruddervirt.cfg"
    config.write_text(config.read_text() + "ssh_pwauth: true\n")
    assert load_recipe(builder_copy).key() != key


def test_the_key_changes_with_a_new_file_or_an_execute_bit(builder_copy: Path) -> None:
    key = load_recipe(builder_copy).key()
    script = builder_copy / "rootfs/usr/local/bin/hello"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello\n")
    with_file = load_recipe(builder_copy).key()
    script.chmod(0o755)
    assert len({key, with_file, load_recipe(builder_copy).key()}) == 3


def test_the_key_changes_with_the_builders_own_source(builder_copy: Path) -> None:
    key = load_recipe(builder_copy).key()
    source = builder_copy / "build.py"
    source.write_text(source.read_text().replace("DISK_SIZE = 2048", "DISK_SIZE = 4096"))
    assert load_recipe(builder_copy).key() != key


@pytest.mark.parametrize(
    "change",
    [
        {"packages": (*load_recipe().packages, "curl")},
        {"packages": load_recipe().packages[1:]},
        {"suite": "trixie"},
        {"mirrors": ("deb http://deb.debian.org/debian bookworm main contrib",)},
        {"dpkg_options": ()},
    ],
    ids=["a package added", "a package dropped", "suite", "mirrors", "dpkg filters"],
)
def test_the_key_changes_with_the_package_selection_and_suite(change: dict) -> None:
    recipe = load_recipe()
    assert dataclasses.replace(recipe, **change).key() != recipe.key()


def test_a_cached_image_is_returned_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = build.entry_dir(tmp_path, load_recipe())
    entry.mkdir()
    (entry / build.IMAGE_NAME).write_bytes(b"qcow2")

    def no_build(*_args: object) -> None:
        raise AssertionError("the cached image should have been used")

    monkeypatch.setattr(build, "bootstrap", no_build)
    assert build.build_image(tmp_path) == entry / build.IMAGE_NAME
    assert build.cached_image(tmp_path) == entry / build.IMAGE_NAME


def test_the_cache_folder_defaults_to_the_environment_then_var_lib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    assert build.default_cache_dir() == tmp_path
    monkeypatch.delenv(build.CACHE_ENV)
    assert build.default_cache_dir() == Path("/var/lib/ruddervirt/cache/images")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user can traverse (pytest's tmp_path lies below a mode-700 one)."""
    path = Path(tempfile.mkdtemp(prefix="rv-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_cache_folder_that_qemu_cannot_traverse_is_refused_before_anything_is_made(
    open_dir: Path,
) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(build.BuildError, match="not traversable"):
        build.prepare_cache_dir(private / "cache" / "images")
    assert list(private.iterdir()) == []


def test_folders_made_for_the_cache_are_traversable_by_qemu(open_dir: Path) -> None:
    cache = open_dir / "a" / "b"
    build.prepare_cache_dir(cache)
    assert all(p.stat().st_mode & 0o755 == 0o755 for p in (open_dir / "a", cache))


def test_a_second_builder_waits_for_the_lock_and_gives_up_after_its_timeout(
    tmp_path: Path,
) -> None:
    with (
        build.cache_lock(tmp_path),
        pytest.raises(build.BuildError, match="another build held"),
        build.cache_lock(tmp_path, wait=0.5),
    ):
        pass
    with build.cache_lock(tmp_path, wait=0.5):  # released: free again
        pass


def test_stale_temporary_builds_are_removed_and_finished_entries_kept(tmp_path: Path) -> None:
    (tmp_path / ".build-dead" / "root").mkdir(parents=True)
    (tmp_path / "debian12-0123456789abcdef").mkdir()
    build.remove_stale_builds(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian12-0123456789abcdef"]
