"""Filling the disk through a download: a size cap per download, from the announced size and
while streaming (an endless stream, `/dev/zero`-like), and a private cache."""

from __future__ import annotations

import os
import stat
import time

import pytest

from ruddervirt.engine.errors import SourceError
from ruddervirt.engine.sources import fetch, human_size
from ruddervirt.fetchpolicy import FetchPolicy, parse_networks
from tests.security.sourceservers import BODY, serving

LOOPBACK = parse_networks("127.0.0.0/8")
CAP = 1 << 20  # 1 MiB


def capped(limit: int = CAP, **kwargs) -> FetchPolicy:
    return FetchPolicy(allow_nets=LOOPBACK, max_bytes=limit, **kwargs)


def left_in(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


def test_a_download_announcing_more_than_the_cap_is_refused_before_reading(tmp_path):
    with serving() as server, pytest.raises(SourceError) as error:
        fetch(server.url("/huge"), None, tmp_path / "cache", policy=capped())
    message = str(error.value)
    assert server.url("/huge") in message
    assert "it is 50 GiB, more than the limit of 1 MiB" in message
    assert "RUDDERVIRT_MAX_DOWNLOAD_BYTES" in message
    assert left_in(tmp_path / "cache") == []


def test_an_endless_stream_stops_at_the_cap_with_a_clear_error(tmp_path):
    started = time.monotonic()
    with serving() as server, pytest.raises(SourceError) as error:
        fetch(server.url("/endless"), None, tmp_path / "cache", policy=capped())
    assert time.monotonic() - started < 30
    assert "stopped at the limit of 1 MiB: the source is larger" in str(error.value)
    assert left_in(tmp_path / "cache") == []


def test_a_file_larger_than_the_cap_is_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "big.img").write_bytes(b"x" * (CAP + 1))
    policy = capped(file_source_dirs=(folder,))
    with pytest.raises(SourceError, match="more than the limit of 1 MiB"):
        fetch((folder / "big.img").as_uri(), None, tmp_path / "cache", policy=policy)
    assert left_in(tmp_path / "cache") == []


def test_a_download_of_exactly_the_cap_is_accepted(tmp_path):
    with serving() as server:
        path = fetch(server.url("/image"), None, tmp_path / "c", policy=capped(len(BODY)))
    assert path.stat().st_size == len(BODY)


def test_the_default_cap_is_twenty_gibibytes():
    assert human_size(FetchPolicy().max_bytes) == "20 GiB"


def test_cache_entries_and_folders_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the most permissive: modes must come from the code, not the umask
    try:
        with serving() as server:
            path = fetch(server.url("/image"), None, tmp_path / "cache", policy=capped())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    for lock in (tmp_path / "cache").glob(".*.lock"):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_an_existing_world_readable_cache_is_made_private(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    with serving() as server:
        fetch(server.url("/image"), None, cache, policy=capped())
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
