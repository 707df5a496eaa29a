"""What the build host may read on an instructor's behalf: one rule set, validator and engine.

Contracts:

* :func:`address_refusal` is the only place that decides whether the build host may connect
  to an address (source disks, ISOs, `files` URLs). Refused are loopback, private (RFC 1918,
  unique local), link-local (cloud metadata lives at 169.254.169.254), shared address space
  (CGNAT, 100.64.0.0/10), multicast, unspecified and reserved addresses, unless the address
  lies inside a network the administrator allowed (``RUDDERVIRT_FETCH_ALLOW_NETS``).
* :func:`url_refusal` is what can be judged from a URL alone: the scheme, a ``file://`` path
  against the allowed folders (``RUDDERVIRT_FILE_SOURCE_DIRS``, resolved: symlinks and ``..``
  cannot leave them), a literal address. The validator reports it at the URL's path and line;
  the engine applies it before every download and cache hit, then checks every address a
  host name resolves to, and every redirect, with :func:`address_refusal`.

Django-free and dependency-free, so the manifest validator and the engine both import it.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_DOWNLOAD_BYTES = 20 << 30  # 20 GiB
FILE_DIRS_SETTING = "RUDDERVIRT_FILE_SOURCE_DIRS"
ALLOW_NETS_SETTING = "RUDDERVIRT_FETCH_ALLOW_NETS"
MAX_BYTES_SETTING = "RUDDERVIRT_MAX_DOWNLOAD_BYTES"
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 (CGNAT)

# The name of each refused kind, in the order they are tested (the first match is named).
_KINDS: tuple[tuple[str, str], ...] = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)


@dataclass(frozen=True)
class FetchPolicy:
    """What a build may download (docs/security.md, "Downloads and images").

    `file_source_dirs`: the only folders `file://` URLs may point into (after resolving
    symlinks and `..`); empty refuses every `file://` URL. `allow_nets`: networks reachable
    although private, loopback, link-local, ... (empty: public addresses only). `max_bytes`:
    the most one download may be, checked against Content-Length and while streaming.
    `max_redirects`: how many HTTP redirects one download may follow.
    """

    file_source_dirs: tuple[Path, ...] = ()
    allow_nets: tuple[IPNetwork, ...] = ()
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    max_redirects: int = 10


class NetworkListError(ValueError):
    """A setting that lists networks holds something that is not a network."""


def parse_networks(text: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from a comma-separated string (or an iterable of strings), e.g.
    ``"127.0.0.0/8, 10.20.0.0/16"``. Empty items are skipped; a bare address is a /32 (/128).
    Raises :class:`NetworkListError` naming the item that is not a network."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise NetworkListError(f"{item!r} is not a network in CIDR form: {exc}") from exc
    return tuple(networks)


def parse_folders(text: str) -> tuple[Path, ...]:
    """Absolute folders from a colon-separated string (``/srv/images:/srv/isos``), resolved.
    Raises ValueError for a relative one."""
    folders = []
    for item in text.split(":"):
        if not item.strip():
            continue
        if not item.startswith("/"):
            raise ValueError(f"{item!r} is not an absolute folder ({FILE_DIRS_SETTING})")
        folders.append(Path(item).resolve())
    return tuple(folders)


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (``[::1]`` brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _named_address(host: str) -> IPAddress | None:
    """The address a URL's host stands for without asking a resolver: a literal address,
    or loopback for ``localhost`` (RFC 6761: it never resolves elsewhere)."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    return literal_address(host)


def address_refusal(address: IPAddress | str, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why the build host must not connect to ``address``, or None when it may.

    The reason names the kind (``"a loopback address"``, ...). An address inside one of the
    ``allowed`` networks is always permitted. IPv4 addresses mapped into IPv6
    (``::ffff:127.0.0.1``) are judged as the IPv4 address they carry.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    for attribute, kind in _KINDS:
        if getattr(ip, attribute):
            return f"{_article(kind)} {kind} address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return "a shared (CGNAT, 100.64.0.0/10) address"
    if not ip.is_global:
        return "a reserved (not globally routable) address"
    return None


def refused_address_message(ip: IPAddress, reason: str) -> str:
    return (
        f"{ip} is {reason}; the build host does not fetch from such addresses unless "
        f"{ALLOW_NETS_SETTING} allows them"
    )


def url_refusal(url: str, policy: FetchPolicy) -> str | None:
    """Why ``url`` may not be read under ``policy``, judged from the URL alone, or None.

    http(s) URLs naming a host by name pass here: their addresses are checked when resolved.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return file_refusal(url, policy)
    if scheme not in {"http", "https"}:
        return f"the scheme {scheme!r} is not fetched (http, https or file only)"
    ip = _named_address(parts.hostname or "")
    if ip is None:
        return None
    reason = address_refusal(ip, policy.allow_nets)
    return None if reason is None else refused_address_message(ip, reason)


def file_refusal(url: str, policy: FetchPolicy) -> str | None:
    """Why the ``file://`` URL ``url`` may not be read, or None (see :func:`file_path`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return "file:// URLs name a path on the build host only"
    if not policy.file_source_dirs:
        return (
            "file:// sources are disabled on this host (an administrator lists the folders "
            f"they may come from in {FILE_DIRS_SETTING})"
        )
    if allowed_root(file_path(url), policy) is None:
        return f"it is outside the folders file:// sources may come from ({FILE_DIRS_SETTING})"
    return None


def file_path(url: str) -> Path:
    """The path a ``file://`` URL names, resolved (symlinks followed, ``..`` removed)."""
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)).resolve()


def allowed_root(path: Path, policy: FetchPolicy) -> Path | None:
    """The allowed folder (resolved) that holds the resolved ``path``, or None."""
    for folder in policy.file_source_dirs:
        root = Path(folder).resolve()
        if path.is_relative_to(root):
            return root
    return None


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
