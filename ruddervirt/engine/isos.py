"""Installer ISOs of blank-disk builds: fetched once, cached, evicted `isoCacheTTL` after use.

ISOs have a cache folder of their own (`EngineConfig.iso_cache_dir`), apart from disk images,
because they are large and only needed while building. Each entry remembers when it was last
used (its mtime, set when a build attaches it and again when the build ends) and for how long
it should be kept after that (a hidden `.<entry>.ttl` file holding the `isoCacheTTL`, in
seconds, of the build that used it last). `evict_expired` removes entries past that time; it
runs at the start of every build. A running VM keeps an evicted ISO open, so eviction never
breaks a build in progress.

The cache folder is private (0700, see engine.sources); QEMU gets each ISO through a hard
link in the build VM's own folder (`attach_link`), never from the cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ruddervirt.engine.config import FetchPolicy
from ruddervirt.engine.sources import _locked as entry_lock
from ruddervirt.engine.sources import cache_key, fetch, private_dir, use_cached
from ruddervirt.manifest.defaults import ISO_CACHE_TTL_SECONDS

LogFn = Callable[[str], None]


def ttl_file(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.ttl")


def mark_used(entry: Path, ttl_s: float) -> None:
    """Record a use of `entry` now, to be kept `ttl_s` seconds after it."""
    os.utime(entry)
    sidecar = ttl_file(entry)
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}")
    tmp.write_text(f"{float(ttl_s)}\n")
    tmp.replace(sidecar)


def fetch_iso(
    url: str,
    checksum: str | None,
    cache_dir: Path,
    *,
    policy: FetchPolicy,
    ttl_s: float,
    should_stop: Callable[[], bool] = lambda: False,
    log: LogFn = lambda _m: None,
) -> Path:
    """A local copy of the ISO at `url`, verified against `checksum` (a mismatch raises
    SourceError before anything boots). Without a checksum the ISO is cached by URL: a
    second build reuses the copy without verifying it (the validator warns about that).
    Either way `policy` decides whether `url` may be read (a cached copy included)."""
    if checksum is None:
        cached = cache_dir / cache_key(url, None)
        with entry_lock(private_dir(cache_dir) / f".{cached.name}.lock"):
            if cached.is_file():
                use_cached(url, cached, policy, None)
                log(f"using cached copy of {url} (no checksum: cached by URL, not verified)")
                mark_used(cached, ttl_s)
                return cached
    path = fetch(url, checksum, cache_dir, policy=policy, should_stop=should_stop, log=log)
    mark_used(path, ttl_s)
    return path


def attach_link(entry: Path, dest: Path) -> Path:
    """`dest`, a name for the cached ISO `entry` in a build VM's folder: a hard link (a
    copy when the two are on different file systems). QEMU opens this, never the cache."""
    dest.unlink(missing_ok=True)
    try:
        os.link(entry, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(entry, dest)
    return dest


def _ttl_of(entry: Path, default_ttl_s: float) -> float:
    try:
        return float(ttl_file(entry).read_text().strip())
    except (OSError, ValueError):
        return default_ttl_s


def evict_expired(
    cache_dir: Path, *, now: float | None = None, default_ttl_s: float = ISO_CACHE_TTL_SECONDS
) -> list[Path]:
    """Remove every ISO whose last use is longer ago than its TTL; returns what went.

    Entries without a TTL file get `default_ttl_s`. An entry being downloaded or attached
    right now is safe: its lock is taken and its age checked again under it."""
    removed: list[Path] = []
    if not cache_dir.is_dir():
        return removed
    for entry in sorted(cache_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        with entry_lock(cache_dir / f".{entry.name}.lock"):
            if _expired(entry, now, default_ttl_s):
                entry.unlink(missing_ok=True)
                ttl_file(entry).unlink(missing_ok=True)
                removed.append(entry)
        if entry in removed:
            with contextlib.suppress(OSError):
                (cache_dir / f".{entry.name}.lock").unlink()
    return removed


def _expired(entry: Path, now: float | None, default_ttl_s: float) -> bool:
    try:
        last_use = entry.stat().st_mtime
    except FileNotFoundError:
        return False
    current = time.time() if now is None else now
    return last_use + _ttl_of(entry, default_ttl_s) < current
