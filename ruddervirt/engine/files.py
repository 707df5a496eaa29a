"""The manifest's named `files`: inline text or a URL fetched once per build.

URLs are fetched through engine.sources under the build's `FetchPolicy`: a `file://` URL
outside the folders an administrator allowed, or an http(s) URL of a refused address, fails
with SourceError when the file is first asked for, and nothing of it is cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ruddervirt.engine.config import FetchPolicy
from ruddervirt.engine.sources import fetch
from ruddervirt.manifest.model import File

# Files up to this size are handed out as bytes; larger ones as a path that is streamed.
INLINE_LIMIT = 4 * 1024 * 1024


class FileStore:
    def __init__(
        self,
        files: Iterable[File],
        cache_dir: Path,
        *,
        policy: FetchPolicy,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self._files = {f.name: f for f in files}
        self._cache_dir = cache_dir
        self._policy = policy
        self._log = log
        self._fetched: dict[str, Path] = {}
        self._lock = threading.Lock()

    def content(
        self, name: str, *, should_stop: Callable[[], bool] = lambda: False
    ) -> bytes | Path:
        """The file's bytes, or the path of its cached copy when larger than INLINE_LIMIT."""
        entry = self._files[name]
        if entry.inline is not None:
            return entry.inline.encode("utf-8")
        assert entry.url is not None  # a file is inline text or a URL (manifest schema)
        with self._lock:
            if name not in self._fetched:
                self._fetched[name] = fetch(
                    entry.url,
                    entry.checksum,
                    self._cache_dir,
                    policy=self._policy,
                    should_stop=should_stop,
                    log=self._log,
                )
        path = self._fetched[name]
        return path.read_bytes() if path.stat().st_size <= INLINE_LIMIT else path

    def text(self, name: str, *, should_stop: Callable[[], bool] = lambda: False) -> str:
        data = self.content(name, should_stop=should_stop)
        raw = data.read_bytes() if isinstance(data, Path) else data
        return raw.decode("utf-8")
