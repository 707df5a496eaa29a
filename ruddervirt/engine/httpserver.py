"""The per-build HTTP server behind `httpDirectory` (preseed, kickstart, Autounattend files).

Contract:
- It listens only on the gateway address of the build's managed subnets (one socket per
  subnet, all on the same port): on the host's bridge, or inside the router's network
  namespace when the gateway lives there (see engine.listen), each socket tied to the
  gateway's interface with SO_BINDTODEVICE where the kernel allows it. It answers only
  clients whose address is inside one of those subnets (anyone else gets 403). The
  management NIC (QEMU user mode, restrict=on) cannot reach it, and neither can anything
  outside the host.
- It serves exactly the files it was given, by name (`/answers`), with GET and HEAD; every
  other path is 404, every other method 501. No directory listings, no file system access.
- Every request is reported through `log(text, vm)` with the client's address, the VM that
  has it (when known), method, path, status and bytes sent, and kept in `requests`, so "the
  guest never fetched the preseed" shows in the build log.
- It never resolves names or opens connections itself (HTTPServer's reverse lookup of its
  own address is skipped).
"""

from __future__ import annotations

import http.server
import ipaddress
import mimetypes
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.engine.listen import gateway_location, listening_socket
from ruddervirt.hypervisor.specs import NetworkSpec

REQUEST_TIMEOUT_S = 30.0
BIND_ATTEMPTS = 20
LogFn = Callable[[str, str], None]  # (text, vm name or "")


@dataclass(frozen=True)
class Listener:
    """Where to listen: the gateway `ip` of managed `subnet` (`network`), on interface
    `device`, in network namespace `netns` (None: the host's)."""

    subnet: str
    ip: str
    network: ipaddress.IPv4Network
    device: str | None = None
    netns: str | None = None


def listener_for(subnet: str, spec: NetworkSpec) -> Listener:
    """The listener on the gateway of the libvirt network `spec` of managed `subnet`."""
    if spec.ipv4 is None:
        raise ValueError(f"subnet {subnet} is unmanaged: it has no gateway to listen on")
    netns, device = gateway_location(spec)
    return Listener(
        subnet=subnet, ip=str(spec.ipv4.ip), network=spec.ipv4.network, device=device, netns=netns
    )


@dataclass(frozen=True)
class RequestRecord:
    client: str
    vm: str
    method: str
    path: str
    status: int
    size: int


def printable(text: str, limit: int = 200) -> str:
    """`text` safe for a log line: control and non-ASCII characters become '?'."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "RudderVirt"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and enough here
    timeout = REQUEST_TIMEOUT_S

    def handle_one_request(self) -> None:
        self._status: int | None = None
        self._sent = 0
        try:
            super().handle_one_request()
        finally:
            if self._status is not None:
                owner: BuildHTTPServer = self.server.owner
                owner.record(
                    self.client_address[0],
                    getattr(self, "command", None) or "-",
                    getattr(self, "path", None) or "-",
                    self._status,
                    self._sent,
                )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            self._status = int(code)
        except (TypeError, ValueError):
            self._status = 0

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are reported through the build log, not stderr

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, *, with_body: bool) -> None:
        owner: BuildHTTPServer = self.server.owner  # type: ignore[attr-defined]
        if not owner.allowed(self.client_address[0]):
            self.send_error(403, "only the build's guests may fetch these files")
            return
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        content = owner.files.get(name)
        if content is None:
            self.send_error(404, "no such file in httpDirectory")
            return
        size = len(content) if isinstance(content, bytes) else content.stat().st_size
        self.send_response(200)
        self.send_header(
            "Content-Type", mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if with_body:
            self._write(content)

    def _write(self, content: bytes | Path) -> None:
        if isinstance(content, bytes):
            self.wfile.write(content)
            self._sent = len(content)
            return
        with open(content, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                self.wfile.write(chunk)
                self._sent += len(chunk)


class _Server(http.server.ThreadingHTTPServer):
    """Serves one already listening socket (made by engine.listen, maybe in a namespace)."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, owner: BuildHTTPServer) -> None:
        self.owner = owner
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        # Not HTTPServer.server_bind, which would look its own address up in DNS.
        host, port = sock.getsockname()[:2]
        self.server_address = (host, port)
        self.server_name, self.server_port = str(host), int(port)


class BuildHTTPServer:
    """Serves `files` (name -> bytes or a local file) to the build's guests; see the module
    docstring. `clients` maps guest addresses to VM names for the log."""

    def __init__(
        self,
        files: Mapping[str, bytes | Path],
        listeners: Sequence[Listener],
        *,
        log: LogFn,
        clients: Mapping[str, str] | None = None,
    ) -> None:
        if not listeners:
            raise ValueError("the HTTP server needs at least one managed subnet to listen on")
        self.files = dict(files)
        self.listeners = tuple(listeners)
        self.clients = dict(clients or {})
        self.port = 0
        self._log = log
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> int:
        """Bind every listener on one free port and serve; returns the port."""
        last: OSError | None = None
        for _attempt in range(BIND_ATTEMPTS):
            try:
                self._bind_all()
                break
            except OSError as exc:
                last = exc
                self._close_all()
        else:
            raise OSError(f"no free port on {self.describe()}: {last}")
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name=f"http-{server.server_name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self.port

    def _bind_all(self) -> None:
        port = 0
        for listener in self.listeners:
            sock = listening_socket(listener.ip, port, device=listener.device, netns=listener.netns)
            server = _Server(sock, self)
            self._servers.append(server)
            port = server.server_port
        self.port = port

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._close_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def _close_all(self) -> None:
        for server in self._servers:
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> BuildHTTPServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- queries --------------------------------------------------------------------
    def address(self, subnet: str) -> tuple[str, int] | None:
        """(HTTPIP, HTTPPort) for a guest on `subnet`, or None when it is not served."""
        for listener in self.listeners:
            if listener.subnet == subnet:
                return listener.ip, self.port
        return None

    def describe(self) -> str:
        return ", ".join(
            f"{x.ip}:{self.port} (subnet {x.subnet}"
            + (f", in network namespace {x.netns})" if x.netns else ")")
            for x in self.listeners
        )

    def allowed(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in listener.network for listener in self.listeners)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def requests_from(self, vm: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.vm == vm]

    # --- called by the handler ------------------------------------------------------
    def record(self, client: str, method: str, path: str, status: int, size: int) -> None:
        vm = self.clients.get(client, "")
        entry = RequestRecord(client, vm, printable(method, 16), printable(path), status, size)
        with self._lock:
            self._records.append(entry)
        who = f"{client} ({vm})" if vm else client
        self._log(f"http: {who} {entry.method} {entry.path} -> {status}, {size} bytes", vm)
