"""Loopback stand-ins for a guest's forwarded port (plain sockets, no Django)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

SSH_BANNER = b"SSH-2.0-dropbear\r\n"


@contextlib.contextmanager
def greeting_server(greeting: bytes | None, *, close_at_once: bool = False) -> Iterator[int]:
    """A loopback server, by port, that greets every connection with `greeting`, then stalls
    (None: says nothing, like QEMU's hostfwd while the guest's SSH server is not up); with
    `close_at_once`, it closes every connection as soon as it accepts it."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                if close_at_once:
                    conn.close()
                    continue
                accepted.append(conn)
                if greeting is not None:
                    conn.sendall(greeting)

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
