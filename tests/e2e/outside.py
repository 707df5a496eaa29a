"""A stand-in "outside" for the internet path, made of two network namespaces of its own:

    router namespace (rvr-…) ── uplink veth, made by gateway_nat ──┐
    UP  (the host's part of every uplink: RUDDERVIRT_UPLINK_NETNS) ┘ wan 198.51.100.2/24,
         route 203.0.113.0/24 via 198.51.100.1, no default route
    OUT (the "internet"): eth0 198.51.100.1/24, 203.0.113.10 on lo, a web server on port 80,
         no route but its own subnet

Neither namespace has a default route or a link to the machine, so nothing a guest sends
through the uplink can leave the machine, whatever the rules say: the far end of the path is
OUT and nothing else. :func:`stand_in_outside` removes both namespaces (and with them every
uplink made into UP) and its server, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER = Path(__file__).with_name("outside_server.py")
PUBLIC = "203.0.113.10"  # TEST-NET-3: the stand-in internet's web server
WAN, WAN_PEER = "198.51.100.2", "198.51.100.1"  # TEST-NET-2: between UP and OUT
TIMEOUT_S = 20


def ip(*args: str) -> str:
    done = subprocess.run(
        ["ip", *args], check=True, timeout=TIMEOUT_S, capture_output=True, text=True
    )
    return done.stdout


@dataclass
class Outside:
    """The two namespaces, and the server's request log."""

    up: str  # the uplinks' far end: what RUDDERVIRT_UPLINK_NETNS names
    out: str
    log: Path

    def url(self, path: str) -> str:
        return f"http://{PUBLIC}{path}"

    def requests(self) -> list[dict[str, str]]:
        """Every request the server answered, in order: ``{"path", "client"}``."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def default_routes(self) -> dict[str, str]:
        """Each namespace's default routes (IPv4 and IPv6): empty strings when sealed."""
        return {
            ns: ip("-n", ns, "-4", "route", "show", "default")
            + ip("-n", ns, "-6", "route", "show", "default")
            for ns in (self.up, self.out)
        }

    def out_routes(self) -> list[str]:
        return ip("-n", self.out, "-4", "route", "show").splitlines()

    def links(self, ns: str) -> list[str]:
        names = []
        for line in ip("-n", ns, "-o", "link", "show").splitlines():
            names.append(line.split(":")[1].strip().split("@")[0])
        return names


def _make(outside: Outside) -> None:
    for ns in (outside.up, outside.out):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        for key in ("all", "default"):
            ip("netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    ip("-n", outside.up, "link", "add", "wan", "type", "veth", "peer", "name", "eth0",
       "netns", outside.out)  # fmt: skip
    ip("-n", outside.up, "addr", "add", f"{WAN}/24", "dev", "wan")
    ip("-n", outside.out, "addr", "add", f"{WAN_PEER}/24", "dev", "eth0")
    ip("-n", outside.out, "addr", "add", f"{PUBLIC}/32", "dev", "lo")
    for ns, dev in ((outside.up, "wan"), (outside.out, "eth0")):
        ip("-n", ns, "link", "set", dev, "up")
    ip("-n", outside.up, "route", "add", "203.0.113.0/24", "via", WAN_PEER)


def _serve(outside: Outside) -> subprocess.Popen:
    argv = [sys.executable, str(SERVER), PUBLIC, "80", str(outside.log)]
    process = subprocess.Popen(
        ["ip", "netns", "exec", outside.out, *argv], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


@contextlib.contextmanager
def stand_in_outside(tag: str, folder: Path) -> Iterator[Outside]:
    """Make the stand-in outside (namespaces ``{tag}-up`` and ``{tag}-out``), yield it, and
    remove all of it afterwards, whatever happened."""
    outside = Outside(up=f"{tag}-up", out=f"{tag}-out", log=folder / "outside-requests.jsonl")
    server: subprocess.Popen | None = None
    try:
        _make(outside)
        server = _serve(outside)
        yield outside
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=TIMEOUT_S)
        for ns in (outside.up, outside.out):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", ns)
