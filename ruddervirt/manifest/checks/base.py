"""Shared helpers for the semantic checks.

The checks run on the raw data even when the schema found errors (so one round shows
everything), so they read it through accessors that tolerate wrong types: a value of the
wrong type is skipped here because the schema already reported it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ruddervirt.manifest import paths
from ruddervirt.manifest.loader import PositionIndex
from ruddervirt.manifest.problems import Problem, Severity

Raw = dict[str, object]


@dataclass
class Reporter:
    """Collects problems, placing each by its path through the position index."""

    index: PositionIndex
    problems: list[Problem] = field(default_factory=list)

    def error(self, path: str, message: str, *, at_key: bool = False) -> None:
        self._add(path, message, Severity.ERROR, at_key)

    def warning(self, path: str, message: str, *, at_key: bool = False) -> None:
        self._add(path, message, Severity.WARNING, at_key)

    def _add(self, path: str, message: str, severity: Severity, at_key: bool) -> None:
        position = self.index.key(path) if at_key else self.index.locate(path)
        line, column = position or (None, None)
        self.problems.append(Problem(path, line, column, message, severity))


def mapping(value: object) -> Raw:
    return value if isinstance(value, dict) else {}


def string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def entries(path: str, value: object) -> Iterator[tuple[str, Raw]]:
    """(path, mapping) for each mapping item of the list at `path`."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield paths.child(path, i), item


def vms(data: Raw) -> Iterator[tuple[str, Raw]]:
    return entries("vms", data.get("vms"))


def check_unique(
    report: Reporter, items: Iterable[tuple[str, Raw]], what: str, key: str = "name"
) -> None:
    """Each `key` value (a name, a slot) occurs once among `items`; repeats are errors."""
    first: dict[str | int, str] = {}
    for path, item in items:
        value = item.get(key)
        if not isinstance(value, str | int) or isinstance(value, bool):
            continue  # absent or of the wrong type: not comparable, the schema reports it
        if value in first:
            report.error(
                paths.child(path, key), f"duplicate {what} {value!r} (first at {first[value]})"
            )
        else:
            first[value] = path


def names(items: Iterable[tuple[str, Raw]]) -> set[str]:
    return {name for _, item in items if (name := string(item.get("name"))) is not None}


def suggest(known: Iterable[str]) -> str:
    """' (defined: a, b, c)' or ' (none is defined)', for unresolved-reference messages."""
    known = sorted(known)
    return f" (defined: {', '.join(known)})" if known else " (none is defined)"


_UNPINNED = re.compile(r"(?<![a-z])(latest|current)(?![a-z])", re.IGNORECASE)


def check_url(report: Reporter, path: str, url: str) -> None:
    """http(s) URLs with a host, or file:// URLs with an absolute path on the build host."""
    try:
        parsed = urlsplit(url)
    except ValueError:
        report.error(path, f"expected a URL, got {url!r}, which cannot be parsed")
        return
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https", "file"):
        shown = f"'{scheme}:'" if scheme else "no scheme"
        report.error(path, f"expected an http://, https:// or file:// URL, got {shown} in {url!r}")
    elif scheme in ("http", "https") and not parsed.hostname:
        report.error(path, f"expected a URL like https://host/path, got {url!r} (no host)")
    elif scheme == "file" and (
        parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")
    ):
        report.error(
            path, f"expected a URL like file:///absolute/path on the build host, got {url!r}"
        )


def warn_unpinned(report: Reporter, path: str, url: str) -> None:
    """URLs naming a moving target give different builds from the same manifest."""
    match = _UNPINNED.search(url)
    if match:
        report.warning(
            path,
            f"the URL contains {match.group(1)!r}: its content changes over time, so rebuilding "
            "gives a different result; pin a dated path",
        )
