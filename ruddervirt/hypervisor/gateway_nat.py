"""NAT egress of a router namespace (a VPC with ``internet`` where the host allows it).

The namespace gets a veth *uplink* to the host on a /30 of its own from 100.64.0.0/10, a
default route over it, and masquerades its subnets behind its uplink address; the host
forwards and masquerades the /30 out of its own default route, like libvirt's NAT networks
do (this turns on the host's ``net.ipv4.ip_forward``). Firewall rules keep it egress only:

* in the namespace, nothing may enter from the uplink but replies (no way in to the guests);
* on the host, an uplink may not reach another uplink (VPCs stay apart) nor the host itself.

Every host rule carries the comment ``rv-uplink:<netns>``; :func:`remove_uplink` deletes the
rules by that comment, so it also cleans up after a crash. Never used on test machines
(``RUDDERVIRT_ALLOW_INTERNET=false`` gives no spec ``nat``); its rule lists are unit tested.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ruddervirt.proc import run

if TYPE_CHECKING:
    from ruddervirt.hypervisor.gateway import GatewayNames

UPLINK_POOL = ipaddress.IPv4Network("100.64.0.0/10")
IPTABLES = "iptables"
TIMEOUT_S = 20.0

Runner = Callable[..., str]


def comment(names: GatewayNames) -> str:
    return f"rv-uplink:{names.netns}"


def uplink_link(netns: str, taken: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /30 of the pool for ``netns``: stable from its name, the next free one on a clash."""
    count = UPLINK_POOL.num_addresses // 4
    start = int(hashlib.sha256(netns.encode()).hexdigest(), 16) % count
    base = int(UPLINK_POOL.network_address)
    for step in range(count):
        link = ipaddress.IPv4Network((base + 4 * ((start + step) % count), 30))
        if not any(link.overlaps(other) for other in taken):
            return link
    raise RuntimeError("no free uplink address left in 100.64.0.0/10")


def host_rules(names: GatewayNames, link: ipaddress.IPv4Network) -> list[list[str]]:
    """iptables arguments adding the host's rules (inserted at the top, in this order)."""
    tag = ["-m", "comment", "--comment", comment(names)]
    return [
        ["-t", "nat", "-A", "POSTROUTING", "-s", str(link), "!", "-d", str(UPLINK_POOL),
         *tag, "-j", "MASQUERADE"],
        ["-t", "filter", "-I", "FORWARD", "1", "-i", names.uplink_host, *tag, "-j", "ACCEPT"],
        ["-t", "filter", "-I", "FORWARD", "1", "-i", names.uplink_host, "-o", "rvu+",
         *tag, "-j", "DROP"],
        ["-t", "filter", "-I", "FORWARD", "1", "-o", names.uplink_host, "-m", "conntrack",
         "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"],
        ["-t", "filter", "-I", "INPUT", "1", "-i", names.uplink_host, *tag, "-j", "DROP"],
    ]  # fmt: skip


def netns_rules(names: GatewayNames) -> list[list[str]]:
    """iptables arguments inside the namespace: masquerade out, only replies back in."""
    uplink = names.uplink_inner
    established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]
    return [
        ["-t", "nat", "-A", "POSTROUTING", "-o", uplink, "-j", "MASQUERADE"],
        ["-t", "filter", "-A", "FORWARD", "-i", uplink, *established],
        ["-t", "filter", "-A", "FORWARD", "-i", uplink, "-j", "DROP"],
        ["-t", "filter", "-A", "INPUT", "-i", uplink, *established],
        ["-t", "filter", "-A", "INPUT", "-i", uplink, "-j", "DROP"],
    ]


def _taken_links(ip: Runner) -> set[ipaddress.IPv4Network]:
    taken = set()
    for line in ip("-4", "-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            taken.add(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return taken


@contextlib.contextmanager
def _pool_lock(runtime_dir: Path):
    runtime_dir.mkdir(parents=True, exist_ok=True)
    with open(runtime_dir / "uplinks.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_uplink(names: GatewayNames, runtime_dir: Path, *, ip: Runner, in_netns: Runner) -> None:
    """Give the router namespace its NAT uplink (once; later calls change nothing)."""
    if Path("/sys/class/net", names.uplink_host).exists():
        return
    with _pool_lock(runtime_dir):
        link = uplink_link(names.netns, _taken_links(ip))
        host, inner = (str(a) for a in list(link.hosts())[:2])
        ip("link", "add", names.uplink_host, "type", "veth", "peer", "name", names.uplink_inner,
           "netns", names.netns)  # fmt: skip
        ip("addr", "add", f"{host}/30", "dev", names.uplink_host)
    ip("link", "set", names.uplink_host, "up")
    ip("-n", names.netns, "addr", "add", f"{inner}/30", "dev", names.uplink_inner)
    ip("-n", names.netns, "link", "set", names.uplink_inner, "up")
    ip("-n", names.netns, "route", "add", "default", "via", host)
    for rule in netns_rules(names):
        in_netns(names.netns, IPTABLES, *rule)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    for rule in host_rules(names, link):
        run([IPTABLES, *rule], timeout=TIMEOUT_S)


def remove_uplink(names: GatewayNames, *, ip: Runner) -> None:
    """Delete the host's rules for ``names.netns`` (found by comment) and its uplink veth."""
    tag = comment(names)
    for table in ("nat", "filter"):
        listing = run([IPTABLES, "-t", table, "-S"], timeout=TIMEOUT_S).stdout.decode()
        for line in listing.splitlines():
            args = shlex.split(line)
            if len(args) > 2 and args[0] == "-A" and tag in args:
                run([IPTABLES, "-t", table, "-D", *args[1:]], timeout=TIMEOUT_S)
    if Path("/sys/class/net", names.uplink_host).exists():
        ip("link", "del", names.uplink_host)
