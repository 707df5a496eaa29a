"""Every URL the build host would fetch, against the host's fetch policy (when given one).

The rule is `ruddervirt.fetchpolicy.url_refusal`, the same function the engine applies
before each download: a literal loopback, private, link-local, CGNAT, multicast or reserved
address (unless allowed), and a `file://` path outside the allowed folders, are errors at the
URL's path and line. Names are judged when the engine resolves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from ruddervirt.fetchpolicy import FetchPolicy, url_refusal
from ruddervirt.manifest.checks.base import Raw, Reporter, entries, mapping, string, vms


def check_sources(report: Reporter, data: Raw, policy: FetchPolicy | None) -> None:
    """Report each refused URL; does nothing without a policy."""
    if policy is None:
        return
    for path, url in fetched_urls(data):
        try:
            if urlsplit(url).scheme.lower() not in ("http", "https", "file"):
                continue  # check_url reports the scheme
            reason = url_refusal(url, policy)
        except ValueError:
            continue  # check_url reports a URL that cannot be parsed
        if reason is not None:
            report.error(path, f"this host does not fetch {url}: {reason}")


def fetched_urls(data: Raw) -> Iterator[tuple[str, str]]:
    """(path, URL) of every `files[].url`, `vms[].source.url` and `vms[].isos[].url`."""
    for path, item in entries("files", data.get("files")):
        yield from _url(f"{path}.url", item.get("url"))
    for vm_path, vm in vms(data):
        yield from _url(f"{vm_path}.source.url", mapping(vm.get("source")).get("url"))
        for iso_path, iso in entries(f"{vm_path}.isos", vm.get("isos")):
            yield from _url(f"{iso_path}.url", iso.get("url"))


def _url(path: str, value: object) -> Iterator[tuple[str, str]]:
    url = string(value)
    if url is not None:
        yield path, url
