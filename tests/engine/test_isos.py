"""The ISO cache: verified once, reused, and evicted isoCacheTTL after its last use."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ruddervirt.engine import isos
from ruddervirt.engine.config import FetchPolicy
from ruddervirt.engine.errors import SourceError

ISO = b"CD001 pretend installer" * 1000


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "debian-12.iso"
    path.write_bytes(ISO)
    return path


def fetch_iso(url: str, checksum: str | None, cache: Path, **kwargs) -> Path:
    """isos.fetch_iso with file:// allowed from the folder of `url` only."""
    policy = FetchPolicy(file_source_dirs=(Path(urlsplit(url).path).parent,))
    return isos.fetch_iso(url, checksum, cache, policy=policy, **kwargs)


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_iso_is_fetched_once_and_then_taken_from_the_cache(tmp_path, source):
    cache, lines = tmp_path / "isos", []
    first = fetch_iso(source.as_uri(), checksum(ISO), cache, ttl_s=60, log=lines.append)
    source.unlink()  # the second build must not need the source any more
    second = fetch_iso(source.as_uri(), checksum(ISO), cache, ttl_s=60, log=lines.append)
    assert first == second and second.read_bytes() == ISO
    assert lines[-1].startswith("using cached copy")


def test_a_checksum_mismatch_fails_and_caches_nothing(tmp_path, source):
    cache = tmp_path / "isos"
    with pytest.raises(SourceError, match="checksum mismatch"):
        fetch_iso(source.as_uri(), checksum(b"other"), cache, ttl_s=60)
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_without_a_checksum_the_iso_is_cached_by_url_unverified(tmp_path, source):
    cache, lines = tmp_path / "isos", []
    first = fetch_iso(source.as_uri(), None, cache, ttl_s=60)
    source.write_bytes(b"changed upstream")
    second = fetch_iso(source.as_uri(), None, cache, ttl_s=60, log=lines.append)
    assert second == first and second.read_bytes() == ISO
    assert "not verified" in lines[-1]


def test_each_use_records_the_ttl_of_the_build_that_used_it(tmp_path, source):
    path = fetch_iso(source.as_uri(), checksum(ISO), tmp_path, ttl_s=3600)
    assert float(isos.ttl_file(path).read_text()) == 3600
    isos.mark_used(path, 120)
    assert float(isos.ttl_file(path).read_text()) == 120


def age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_an_iso_unused_for_longer_than_its_ttl_is_evicted(tmp_path, source):
    path = fetch_iso(source.as_uri(), checksum(ISO), tmp_path, ttl_s=3600)
    age(path, 3601)
    assert isos.evict_expired(tmp_path) == [path]
    assert not path.exists() and not isos.ttl_file(path).exists()


def test_an_iso_used_within_its_ttl_stays(tmp_path, source):
    path = fetch_iso(source.as_uri(), checksum(ISO), tmp_path, ttl_s=3600)
    age(path, 3500)
    assert isos.evict_expired(tmp_path) == []
    assert path.exists()


def test_every_entry_keeps_its_own_ttl(tmp_path, source):
    short = fetch_iso(source.as_uri(), checksum(ISO), tmp_path, ttl_s=60)
    other = tmp_path.parent / "other.iso"
    other.write_bytes(b"another")
    long = fetch_iso(other.as_uri(), checksum(b"another"), tmp_path, ttl_s=86400)
    age(short, 120)
    age(long, 120)
    assert isos.evict_expired(tmp_path) == [short]
    assert long.exists()


def test_entries_without_a_ttl_file_get_the_default(tmp_path):
    stray = tmp_path / ("a" * 64)
    stray.write_bytes(b"x")
    age(stray, 100)
    assert isos.evict_expired(tmp_path, default_ttl_s=1000) == []
    assert isos.evict_expired(tmp_path, default_ttl_s=50) == [stray]


def test_a_missing_cache_folder_is_nothing_to_evict(tmp_path):
    assert isos.evict_expired(tmp_path / "none") == []
