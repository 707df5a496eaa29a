"""Fetching source disks, ISOs and files: checked, streamed, capped, checksummed, cached.

A download is cached under the sha256 of (url, expected checksum); a second build with
the same pair uses the cached copy without touching the network. A checksum mismatch
is an error before anything boots, naming the expected and actual digests.

Contracts:

* What may be read, and from where, is ``FetchPolicy``'s (see ``engine.download``); a
  cached copy is handed out only for a URL the policy still allows.
* A download stops at ``FetchPolicy.max_bytes`` (Content-Length and bytes actually read).
* Cache folders are created 0700 and entries 0600 from the start (they may hold whatever an
  administrator allowed to be read); a refused or failed download leaves nothing behind.
* ``verify`` (e.g. the image check of a source disk) runs on the finished download before
  it enters the cache, and on every cache hit; when it raises, the entry is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ruddervirt.engine.config import FetchPolicy
from ruddervirt.engine.download import Opened, check_static, open_source
from ruddervirt.engine.errors import SourceError
from ruddervirt.hypervisor.image_check import ImageInfo, ImageRefused, check_image
from ruddervirt.proc import ExternalCommandError

CHUNK = 1024 * 1024
CONNECT_TIMEOUT_S = 30.0
MAX_BYTES_SETTING = "RUDDERVIRT_MAX_DOWNLOAD_BYTES"
LogFn = Callable[[str], None]
StopFn = Callable[[], bool]
Verify = Callable[[Path], None]


def normalize_checksum(checksum: str | None) -> str | None:
    """'sha256:<hex>' or bare hex -> lowercase hex; None stays None."""
    if not checksum:
        return None
    value = checksum.split(":", 1)[1] if ":" in checksum else checksum
    return value.strip().lower()


def cache_key(url: str, checksum: str | None) -> str:
    return hashlib.sha256(f"{url}\n{normalize_checksum(checksum) or ''}".encode()).hexdigest()


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700, parents as usual) or tighten it to 0700; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)  # a cache made before entries were private
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Only one process downloads a given cache entry at a time."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def human_size(size: int) -> str:
    """``21474836480`` -> ``"20 GiB"`` (two decimals when not whole)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.2f} {unit}"
    return f"{size} bytes"


def _too_large(url: str, limit: int, size: int | None = None) -> SourceError:
    if size is None:
        what = f"stopped at the limit of {human_size(limit)}: the source is larger"
    else:
        what = f"refused: it is {human_size(size)}, more than the limit of {human_size(limit)}"
    return SourceError(
        f"download of {url} {what} (an administrator sets the limit in {MAX_BYTES_SETTING})"
    )


def _copy(
    url: str, source: Opened, out: BinaryIO, limit: int, should_stop: StopFn, log: LogFn
) -> str:
    """Copy ``source`` to ``out`` up to ``limit`` bytes; returns the sha256 hex of it."""
    if source.length is not None and source.length > limit:
        raise _too_large(url, limit, source.length)
    digest = hashlib.sha256()
    total = 0
    last_report = time.monotonic()
    of = f" of {human_size(source.length)}" if source.length else ""
    while True:
        if should_stop():
            raise SourceError(f"download of {url} stopped")
        try:
            chunk = source.read(min(CHUNK, limit - total + 1))
        except OSError as exc:  # socket timeout mid-transfer
            raise SourceError(f"download of {url} failed after {total} bytes: {exc}") from exc
        if not chunk:
            return digest.hexdigest()
        total += len(chunk)
        if total > limit:
            raise _too_large(url, limit)
        digest.update(chunk)
        out.write(chunk)
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            log(f"downloading {url}: {human_size(total)}{of}")


def _stream(url: str, dest: Path, policy: FetchPolicy, *, should_stop: StopFn, log: LogFn) -> str:
    """Copy ``url`` into the (already created, private) file ``dest``; returns its sha256."""
    with open_source(url, policy, timeout=CONNECT_TIMEOUT_S) as source, open(dest, "wb") as out:
        return _copy(url, source, out, policy.max_bytes, should_stop, log)


def fetch(
    url: str,
    checksum: str | None,
    cache_dir: Path,
    *,
    policy: FetchPolicy,
    verify: Verify | None = None,
    should_stop: StopFn = lambda: False,
    log: LogFn = lambda _m: None,
) -> Path:
    """Return a local path holding the content of `url`, verified against `checksum`.

    Cached when a checksum is given (the checksum makes the entry trustworthy); without
    one, the URL is fetched again every time, since its content may have changed. Raises
    SourceError for anything refused or failed, with nothing left in the cache.
    """
    expected = normalize_checksum(checksum)
    key = cache_key(url, checksum)
    private_dir(cache_dir)
    final = cache_dir / key
    with _locked(cache_dir / f".{key}.lock"):
        if expected and final.exists():
            use_cached(url, final, policy, verify)
            log(f"using cached copy of {url}")
            return final
        _download(url, expected, final, policy, verify=verify, should_stop=should_stop, log=log)
    return final


def fetch_image(
    url: str,
    checksum: str | None,
    cache_dir: Path,
    *,
    policy: FetchPolicy,
    should_stop: StopFn = lambda: False,
    log: LogFn = lambda _m: None,
) -> tuple[Path, ImageInfo]:
    """`fetch` for a source disk: the image's format is determined once and the image is
    refused (SourceError naming the URL, nothing cached) when it has a backing file, an
    external data file or a ``json:`` reference, or is not qcow2 or raw."""
    found: list[ImageInfo] = []

    def verify(path: Path) -> None:
        try:
            found.append(check_image(path))
        except ImageRefused as exc:
            raise SourceError(f"source image {url} refused: {exc}") from exc
        except ExternalCommandError as exc:
            raise SourceError(f"source image {url} cannot be read as a disk image: {exc}") from exc

    path = fetch(
        url, checksum, cache_dir, policy=policy, verify=verify, should_stop=should_stop, log=log
    )
    return path, found[-1]


def use_cached(url: str, entry: Path, policy: FetchPolicy, verify: Verify | None) -> None:
    """Check a cache hit: the URL still allowed, the entry private and still passing
    ``verify`` (removed when it does not). The caller holds the entry's lock."""
    check_static(url, policy)
    if stat.S_IMODE(entry.stat().st_mode) != 0o600:
        entry.chmod(0o600)  # cached before entries were private
    if verify is not None:
        try:
            verify(entry)
        except BaseException:
            entry.unlink(missing_ok=True)
            raise
    os.utime(entry)  # last use, for eviction


def _download(
    url: str,
    expected: str | None,
    final: Path,
    policy: FetchPolicy,
    *,
    verify: Verify | None,
    should_stop: StopFn,
    log: LogFn,
) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.")  # 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        started = time.monotonic()
        actual = _stream(url, tmp, policy, should_stop=should_stop, log=log)
        if expected and actual != expected:
            raise SourceError(
                f"checksum mismatch for {url}: expected sha256:{expected}, got sha256:{actual}"
            )
        if verify is not None:
            verify(tmp)
        tmp.replace(final)
        log(
            f"downloaded {url} ({final.stat().st_size} bytes, sha256:{actual}) "
            f"in {time.monotonic() - started:.1f}s"
        )
    finally:
        tmp.unlink(missing_ok=True)


def evict(cache_dir: Path, *, older_than_s: float) -> list[Path]:
    """Remove cache entries not used for `older_than_s` seconds."""
    removed: list[Path] = []
    if not cache_dir.is_dir():
        return removed
    cutoff = time.time() - older_than_s
    for entry in cache_dir.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.stat().st_mtime < cutoff:
            with _locked(cache_dir / f".{entry.name}.lock"):
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
