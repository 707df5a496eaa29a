"""Paths naming values in a manifest: `vms[0].provisioners[2].file.fileRef`.

One spelling everywhere (the position index, schema errors, semantic checks), so a path
found by one part can be looked up by another.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_LAST_SEGMENT = re.compile(r'(\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])\Z')


def child(path: str, key: str | int) -> str:
    """The path of `key` (a mapping key or a list index) inside the value at `path`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    # Keys with dots, spaces and the like are quoted so the path stays unambiguous.
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def join(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path = child(path, part)
    return path


def parent(path: str) -> str | None:
    """The enclosing path, or None for the root ("")."""
    if not path:
        return None
    match = _LAST_SEGMENT.search(path)
    if match is None:  # a top-level key
        return ""
    return path[: match.start()]
