"""Reading the host through `file://`: refused unless an administrator allowed the folder,
and then only inside it (no `..`, no symlink out, no device or FIFO)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from ruddervirt.engine import download
from ruddervirt.engine.errors import SourceError
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.sources import fetch
from ruddervirt.fetchpolicy import FetchPolicy
from ruddervirt.manifest.model import File


@pytest.fixture
def allowed(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "base.img").write_bytes(b"an allowed image")
    return folder


def policy_for(folder: Path) -> FetchPolicy:
    return FetchPolicy(file_source_dirs=(folder,))


def left_in(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def test_file_etc_shadow_is_refused_when_no_folder_is_allowed(tmp_path):
    with pytest.raises(SourceError) as error:
        fetch("file:///etc/shadow", None, tmp_path / "cache", policy=FetchPolicy())
    assert "file:///etc/shadow refused: file:// sources are disabled" in str(error.value)
    assert "RUDDERVIRT_FILE_SOURCE_DIRS" in str(error.value)
    assert left_in(tmp_path / "cache") == []


def test_file_etc_shadow_is_refused_when_another_folder_is_allowed(tmp_path, allowed):
    with pytest.raises(SourceError, match="outside the folders file:// sources may come from"):
        fetch("file:///etc/shadow", None, tmp_path / "cache", policy=policy_for(allowed))
    assert left_in(tmp_path / "cache") == []


def test_a_file_inside_an_allowed_folder_is_fetched(tmp_path, allowed):
    url = (allowed / "base.img").as_uri()
    path = fetch(url, None, tmp_path / "cache", policy=policy_for(allowed))
    assert path.read_bytes() == b"an allowed image"


def test_dot_dot_out_of_the_allowed_folder_is_refused(tmp_path, allowed):
    url = f"file://{allowed}/../../../../../../etc/shadow"
    with pytest.raises(SourceError, match="outside the folders"):
        fetch(url, None, tmp_path / "cache", policy=policy_for(allowed))


def test_a_symlink_escaping_the_allowed_folder_is_refused(tmp_path, allowed):
    (allowed / "shadow.img").symlink_to("/etc/shadow")
    (allowed / "etc").symlink_to("/etc", target_is_directory=True)
    for name in ("shadow.img", "etc/shadow"):
        with pytest.raises(SourceError, match="outside the folders"):
            fetch((allowed / name).as_uri(), None, tmp_path / "c", policy=policy_for(allowed))
    assert left_in(tmp_path / "c") == []


def test_a_symlink_swapped_in_after_the_check_is_caught_on_the_opened_file(
    tmp_path, allowed, monkeypatch
):
    """The race: the path was inside when checked, a folder became a symlink out before
    the open. The descriptor actually opened is checked too."""
    (allowed / "etc").symlink_to("/etc", target_is_directory=True)
    unresolved = allowed / "etc" / "hostname"
    monkeypatch.setattr(download, "url_refusal", lambda url, policy: None)
    monkeypatch.setattr(download, "file_path", lambda url: unresolved)
    with pytest.raises(SourceError, match="leads outside the allowed folders"):
        download.open_source(unresolved.as_uri(), policy_for(allowed), timeout=5)


def test_a_device_is_refused_rather_than_read_forever(tmp_path):
    with pytest.raises(SourceError, match="not a regular file"):
        fetch("file:///dev/zero", None, tmp_path / "c", policy=policy_for(Path("/dev")))
    assert left_in(tmp_path / "c") == []


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, allowed):
    os.mkfifo(allowed / "pipe")
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            fetch((allowed / "pipe").as_uri(), None, tmp_path / "c", policy=policy_for(allowed))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the fetch blocked on the FIFO"
    assert isinstance(outcome[0], SourceError) and "not a regular file" in str(outcome[0])


def test_a_files_entry_reading_the_host_is_refused(tmp_path):
    """The attack of the issue: `files: [{name: s, url: file:///etc/shadow}]` + a file step."""
    store = FileStore([File(name="s", url="file:///etc/shadow")], tmp_path / "files",
                      policy=FetchPolicy())  # fmt: skip
    with pytest.raises(SourceError, match="file:///etc/shadow refused"):
        store.content("s")
    assert left_in(tmp_path / "files") == []


def test_a_cached_copy_is_not_handed_out_once_its_folder_is_no_longer_allowed(tmp_path, allowed):
    url = (allowed / "base.img").as_uri()
    checksum = "sha256:" + hashlib.sha256(b"an allowed image").hexdigest()
    fetch(url, checksum, tmp_path / "cache", policy=policy_for(allowed))
    with pytest.raises(SourceError, match="file:// sources are disabled"):
        fetch(url, checksum, tmp_path / "cache", policy=FetchPolicy())
