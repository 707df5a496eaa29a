"""Fetching source disks, ISOs and files: streamed, checksummed, cached.

A download is cached under the sha256 of (url, expected checksum); a second build with
the same pair uses the cached copy without touching the network. A checksum mismatch
is an error before anything boots, naming the expected and actual digests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from ruddervirt.engine.errors import SourceError

CHUNK = 1024 * 1024
CONNECT_TIMEOUT_S = 30.0
LogFn = Callable[[str], None]


def normalize_checksum(checksum: str | None) -> str | None:
    """'sha256:<hex>' or bare hex -> lowercase hex; None stays None."""
    if not checksum:
        return None
    value = checksum.split(":", 1)[1] if ":" in checksum else checksum
    return value.strip().lower()


def cache_key(url: str, checksum: str | None) -> str:
    return hashlib.sha256(f"{url}\n{normalize_checksum(checksum) or ''}".encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Only one process downloads a given cache entry at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(url: str, timeout: float):
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "file":
        path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {url}: {exc.strerror}") from exc
    if scheme not in {"http", "https"}:
        raise SourceError(f"unsupported URL scheme {scheme!r} in {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "RudderVirt"})  # noqa: S310
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"download of {url} failed: {reason}") from exc


def _stream(url: str, dest: Path, *, should_stop: Callable[[], bool], log: LogFn) -> str:
    """Copy `url` to `dest`, returning the sha256 hex of what was written."""
    digest = hashlib.sha256()
    total = 0
    last_report = time.monotonic()
    with _open(url, CONNECT_TIMEOUT_S) as source, open(dest, "wb") as out:
        headers = getattr(source, "headers", None)
        size = headers.get("Content-Length") if headers is not None else None
        while True:
            if should_stop():
                raise SourceError(f"download of {url} stopped")
            try:
                chunk = source.read(CHUNK)
            except OSError as exc:  # socket timeout mid-transfer
                raise SourceError(f"download of {url} failed after {total} bytes: {exc}") from exc
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
            total += len(chunk)
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                of = f" of {int(size) // CHUNK} MiB" if size else ""
                log(f"downloading {url}: {total // CHUNK} MiB{of}")
    return digest.hexdigest()


def fetch(
    url: str,
    checksum: str | None,
    cache_dir: Path,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    log: LogFn = lambda _m: None,
) -> Path:
    """Return a local path holding the content of `url`, verified against `checksum`.

    Cached when a checksum is given (the checksum makes the entry trustworthy); without
    one, the URL is fetched again every time, since its content may have changed.
    """
    expected = normalize_checksum(checksum)
    key = cache_key(url, checksum)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key
    with _locked(cache_dir / f".{key}.lock"):
        if expected and final.exists():
            os.utime(final)  # last use, for eviction
            log(f"using cached copy of {url}")
            return final
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            started = time.monotonic()
            actual = _stream(url, tmp, should_stop=should_stop, log=log)
            if expected and actual != expected:
                raise SourceError(
                    f"checksum mismatch for {url}: expected sha256:{expected}, got sha256:{actual}"
                )
            tmp.chmod(0o644)
            tmp.replace(final)
            log(
                f"downloaded {url} ({final.stat().st_size} bytes, sha256:{actual}) "
                f"in {time.monotonic() - started:.1f}s"
            )
        finally:
            tmp.unlink(missing_ok=True)
    return final


def evict(cache_dir: Path, *, older_than_s: float) -> list[Path]:
    """Remove cache entries not used for `older_than_s` seconds."""
    removed = []
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
