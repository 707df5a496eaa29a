"""Opening a source URL under the fetch policy (the only way the engine reads a URL).

Contracts:

* ``file://`` URLs are read only from the folders in ``FetchPolicy.file_source_dirs``: the
  path is resolved (symlinks, ``..``) and must stay inside one of them, checked again on the
  opened descriptor (a symlink swapped in after the check does not escape); only regular
  files are read.
* ``http(s)://`` host names are resolved once per request and refused when any address is
  refused by :func:`ruddervirt.fetchpolicy.address_refusal`; the connection goes to a checked
  address (no second lookup), while the Host header and TLS SNI/certificate check keep the
  name. Redirects are followed here, each target checked the same way, at most
  ``max_redirects``; a redirect to another scheme or from https to http is refused.
* Every refusal or failure raises ``SourceError`` naming the URL and the reason.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import stat
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ruddervirt.engine.errors import SourceError
from ruddervirt.fetchpolicy import (
    FetchPolicy,
    IPAddress,
    address_refusal,
    allowed_root,
    file_path,
    literal_address,
    refused_address_message,
    url_refusal,
)

RESOLVE_TIMEOUT_S = 15.0
REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "RudderVirt"


class Opened:
    """An open source: ``read(n)`` up to n bytes (b"" at the end), ``close()``.

    ``length`` is the size the source announced (Content-Length, or the file's size), or
    None; ``url`` is the URL finally read (after redirects)."""

    def __init__(
        self,
        stream: BinaryIO | http.client.HTTPResponse,
        length: int | None,
        url: str,
        closing: tuple[http.client.HTTPConnection, ...] = (),
    ) -> None:
        self._stream = stream
        self._closing: tuple[BinaryIO | http.client.HTTPResponse | http.client.HTTPConnection, ...]
        self._closing = (stream, *closing)
        self.length = length
        self.url = url

    def read(self, size: int) -> bytes:
        return self._stream.read(size)

    def close(self) -> None:
        for item in self._closing:
            item.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def open_source(url: str, policy: FetchPolicy, *, timeout: float) -> Opened:
    """Open ``url`` for reading under ``policy``; ``timeout`` bounds each network wait."""
    check_static(url, policy)
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        return _open_file(url, policy)
    return _open_http(url, policy, timeout)


def check_static(url: str, policy: FetchPolicy) -> None:
    """SourceError when ``url`` is refused from the URL alone (fetchpolicy.url_refusal: the
    scheme, a ``file://`` path outside the allowed folders, a refused literal address).
    Also run on cache hits, so a cached copy is never handed out for a URL the policy no
    longer allows."""
    reason = url_refusal(url, policy)
    if reason is not None:
        raise SourceError(f"{url} refused: {reason}")


# --- file:// ---------------------------------------------------------------------------
def _open_file(url: str, policy: FetchPolicy) -> Opened:
    """Open the allowed file of ``url``: no symlink as the last component, the opened
    descriptor itself inside an allowed folder, a regular file (not a device or FIFO)."""
    path = file_path(url)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot read {url}: {exc.strerror}") from exc
    try:
        # What was opened, whatever happened to the path since it was resolved.
        if allowed_root(Path(os.readlink(f"/proc/self/fd/{fd}")), policy) is None:
            raise SourceError(f"{url} refused: it leads outside the allowed folders")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"{url} refused: it is not a regular file")
        os.set_blocking(fd, True)
        stream = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return Opened(stream, info.st_size, url)


# --- http(s):// ---------------------------------------------------------------------------
def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (TCP), in resolver order; bounded in time.

    getaddrinfo has no timeout of its own: it runs in a daemon thread that is abandoned
    when it takes longer than ``RESOLVE_TIMEOUT_S``."""
    found: list[list[IPAddress]] = []
    failed: list[OSError] = []

    def work() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            failed.append(exc)
            return
        seen: dict[str, IPAddress] = {}
        for *_rest, sockaddr in infos:
            text = str(sockaddr[0])
            ip = literal_address(text.split("%")[0])
            if ip is not None:
                seen.setdefault(text, ip)
        found.append(list(seen.values()))

    worker = threading.Thread(target=work, name=f"resolve-{host}", daemon=True)
    worker.start()
    worker.join(RESOLVE_TIMEOUT_S)
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"resolving {host} took longer than {RESOLVE_TIMEOUT_S:g} s")
    return found[0]


@dataclass(frozen=True)
class _Target:
    url: str
    https: bool
    host: str
    port: int
    path: str


def _target(origin: str, url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise SourceError(f"download of {origin} refused: it leads to {url} ({scheme}:)")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise SourceError(f"download of {origin} failed: bad port in {url}") from exc
    if not parts.hostname:
        raise SourceError(f"download of {origin} failed: no host in {url}")
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return _Target(url, scheme == "https", parts.hostname, port, path)


def _open_http(url: str, policy: FetchPolicy, timeout: float) -> Opened:
    current = _target(url, url)
    for _hop in range(policy.max_redirects + 1):
        addresses = _checked_addresses(url, current, policy)
        connection, response = _request(url, current, addresses, timeout)
        if response.status not in REDIRECTS:
            return _accept(url, current, connection, response)
        location = response.getheader("Location")
        response.close()
        connection.close()
        if not location:
            raise SourceError(f"download of {url} failed: HTTP {response.status} without Location")
        following = _target(url, urllib.parse.urljoin(current.url, location))
        if current.https and not following.https:
            raise SourceError(
                f"download of {url} refused: it redirects from https to {following.url}"
            )
        current = following
    raise SourceError(f"download of {url} refused: more than {policy.max_redirects} redirects")


def _checked_addresses(origin: str, target: _Target, policy: FetchPolicy) -> list[IPAddress]:
    literal = literal_address(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = resolve_host(target.host, target.port)
        except OSError as exc:
            raise SourceError(
                f"download of {origin} failed: cannot resolve {target.host}: {exc}"
            ) from exc
        if not addresses:
            raise SourceError(f"download of {origin} failed: {target.host} has no address")
    _check_addresses(origin, target.url, addresses, policy)
    return addresses


def _check_addresses(
    origin: str, url: str, addresses: list[IPAddress], policy: FetchPolicy
) -> None:
    for ip in addresses:
        reason = address_refusal(ip, policy.allow_nets)
        if reason is not None:
            via = "" if url == origin else f" (redirected to {url})"
            raise SourceError(
                f"download of {origin} refused{via}: {refused_address_message(ip, reason)}"
            )


def _request(
    origin: str, target: _Target, addresses: list[IPAddress], timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``target`` from the first of ``addresses`` that answers."""
    last: Exception | None = None
    for connection in _connections(target, addresses, timeout):
        try:
            connection.request("GET", target.path, headers={"User-Agent": USER_AGENT})
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            last = exc
    raise SourceError(f"download of {origin} failed: {last}")


def _connections(
    target: _Target, addresses: list[IPAddress], timeout: float
) -> Iterator[http.client.HTTPConnection]:
    context = ssl.create_default_context() if target.https else None
    for ip in addresses:
        if context is not None:
            yield _PinnedHTTPSConnection(target.host, target.port, str(ip), timeout, context)
        else:
            yield _PinnedHTTPConnection(target.host, target.port, str(ip), timeout)


def _accept(
    origin: str,
    target: _Target,
    connection: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
) -> Opened:
    if response.status != 200:
        response.close()
        connection.close()
        raise SourceError(
            f"download of {origin} failed: HTTP {response.status} {response.reason}"
            + ("" if target.url == origin else f" from {target.url}")
        )
    length = response.getheader("Content-Length")
    size = int(length) if length and length.strip().isdigit() else None
    return Opened(response, size, target.url, closing=(connection,))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As :class:`_PinnedHTTPConnection`, with TLS: SNI and the certificate name the host."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
