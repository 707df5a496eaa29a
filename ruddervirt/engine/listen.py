"""Listening sockets on a guest network's gateway address, wherever that address lives.

A managed network's gateway address is either on the host's bridge (libvirt's own dnsmasq)
or inside the network namespace of its router (ruddervirt.hypervisor.gateway: the host then
has no address on guest segments at all). `gateway_location` tells which, and
`listening_socket` opens a TCP socket bound to the address there: inside a namespace it is
created by a short-lived thread that enters the namespace (setns affects only the calling
thread), so the rest of the process never leaves the host's namespace. A socket keeps the
namespace it was made in, so serving it afterwards needs nothing special.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

from ruddervirt.hypervisor.specs import NetworkSpec

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
BACKLOG = 16


def gateway_location(spec: NetworkSpec) -> tuple[str | None, str | None]:
    """(network namespace or None for the host, interface holding the gateway address)."""
    try:
        from ruddervirt.hypervisor import gateway
    except ImportError:  # gateways on the host bridge (libvirt's dnsmasq)
        return None, spec.bridge
    names = gateway.names_for(spec)
    if (NETNS_DIR / names.netns).exists():
        return names.netns, names.inner
    return None, spec.bridge


def _bound_socket(ip: str, port: int, device: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if device:
            # Not permitted for every user; the address alone still limits who reaches it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind((ip, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _enter_netns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot enter network namespace {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def listening_socket(
    ip: str, port: int, *, device: str | None = None, netns: str | None = None
) -> socket.socket:
    """A listening TCP socket on `ip`:`port` (0: any free port), tied to `device` where the
    kernel allows it, made inside `netns` when given. Raises OSError."""
    if netns is None:
        return _bound_socket(ip, port, device)
    result: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            _enter_netns(netns)
            result.append(_bound_socket(ip, port, device))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    # The thread ends inside the namespace; it never runs anything else.
    worker = threading.Thread(target=inside, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join(timeout=10)
    if not result:
        raise OSError(f"timed out opening a socket in network namespace {netns}")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
