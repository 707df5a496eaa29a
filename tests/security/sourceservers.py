"""Real loopback HTTP servers for the download attacks: a plain file, a redirect, a huge
announced size, an endless stream. Each server records the requests it received, so a test
can prove a refused address was never contacted."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

BODY = b"pretend disk image\n" * 64


@dataclass
class Served:
    host: str
    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    redirect_to: str = ""

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self) -> None:
        self.served.requests.append((self.path, self.headers.get("Host", "")))
        route = self.path.split("?")[0]
        if route == "/image":
            self._send(BODY)
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.served.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(50 << 30))
            self.end_headers()
            self._endless()
        elif route == "/endless":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self._endless()
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _endless(self) -> None:
        """Write until the client hangs up (bounded, so a broken client cannot hang us)."""
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            for _ in range(100_000):
                self.wfile.write(chunk)


@contextlib.contextmanager
def serving(host: str = "127.0.0.1") -> Iterator[Served]:
    """A server on ``host`` (any 127/8 address works on Linux loopback), port chosen freely."""
    served = Served(host=host, port=0)
    handler = type("Handler", (_Handler,), {"served": served})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
