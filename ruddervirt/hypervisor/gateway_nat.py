"""NAT egress of a router namespace (a VPC with ``internet`` where the host allows it).

The namespace gets a veth *uplink* to the host on a /30 of its own from 100.64.0.0/10, a
default route over it, and masquerades its subnets behind its uplink address; the host
forwards and masquerades the /30 out of its own default route, like libvirt's NAT networks
do (this turns on the host's ``net.ipv4.ip_forward``). Firewall rules keep it egress only,
and egress to the internet only (:mod:`ruddervirt.hypervisor.gateway_egress`):

* in the namespace, nothing may enter from the uplink but replies (no way in to the guests),
  and nothing leaves by it for a private, link-local, CGNAT, multicast or reserved address or
  a subnet of the host's;
* on the host, an uplink may reach none of those either, nor another uplink (VPCs stay apart),
  nor the host itself.

Every rule is in place before the uplink comes up and the default route is set, so there is
no moment where a guest's packets leave unfiltered; the default route is set last and marks a
complete uplink (a half-made one is removed and made again).

Every host rule carries the comment ``rv-uplink:<netns>``; :func:`remove_uplink` deletes the
rules by that comment, so it also cleans up after a crash. The host is :data:`HOST`, the
machine itself; tests pass a :class:`Host` that is a network namespace standing in for it
(tests/security/test_egress_namespaces.py runs the whole path there, never on the host).

Where the gateways' uplinks end is :func:`uplink_host`: the machine, unless the environment
variable ``RUDDERVIRT_UPLINK_NETNS`` names a network namespace, which then takes the host's
part for every uplink (its routes, its firewall, its ``ip_forward``) and the machine's own
network stack is never touched. The test suite points it at a namespace that does not exist,
so a test that asks for NAT fails instead of reaching the host's real default route; the one
test of the whole internet path points it at a stand-in "outside" it makes
(tests/e2e/test_internet.py). A named namespace that does not exist is an error
(:class:`UplinkError`), never a fall back to the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.hypervisor import gateway_egress
from ruddervirt.hypervisor.gateway_egress import EgressPolicy
from ruddervirt.hypervisor.gateway_names import GatewayNames
from ruddervirt.proc import CommandFailed, run

UPLINK_POOL = ipaddress.IPv4Network("100.64.0.0/10")
IPTABLES = "iptables"
TIMEOUT_S = 20.0
UPLINK_NETNS_ENV = "RUDDERVIRT_UPLINK_NETNS"
NETNS_DIR = Path("/run/netns")
_NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

Runner = Callable[..., str]


@dataclass(frozen=True)
class Host:
    """The host side of uplinks: this machine (``netns`` None) or a namespace standing in."""

    netns: str | None = None

    def run(self, *argv: str) -> str:
        """Run ``argv`` on this host side; its stdout."""
        if self.netns is not None:
            argv = ("ip", "netns", "exec", self.netns, *argv)
        return run(argv, timeout=TIMEOUT_S).stdout.decode()

    def link_exists(self, name: str) -> bool:
        if self.netns is None:
            return Path("/sys/class/net", name).exists()
        try:
            self.run("ip", "link", "show", "dev", name)
        except CommandFailed:
            return False
        return True


HOST = Host()


class UplinkError(Exception):
    """The namespace ``RUDDERVIRT_UPLINK_NETNS`` names is not usable (no uplink is made)."""


def uplink_host(environ: Mapping[str, str] = os.environ) -> Host:
    """Where uplinks end, read at every call: :data:`HOST`, or the namespace
    ``RUDDERVIRT_UPLINK_NETNS`` names. Raises :class:`UplinkError` when that namespace is
    malformed or does not exist (never falls back to the machine)."""
    netns = environ.get(UPLINK_NETNS_ENV, "")
    if not netns:
        return HOST
    if not _NETNS_NAME.fullmatch(netns):
        raise UplinkError(f"{UPLINK_NETNS_ENV}={netns!r} is not a network namespace name")
    if not (NETNS_DIR / netns).exists():
        raise UplinkError(
            f"{UPLINK_NETNS_ENV}={netns}: no such network namespace; no NAT uplink is made"
        )
    return Host(netns)


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


def host_rules(
    names: GatewayNames, link: ipaddress.IPv4Network, policy: EgressPolicy
) -> list[list[str]]:
    """iptables arguments adding the host's rules, in this order (each insert lands below
    the one before it, so the chains' tops read like the lists in gateway_egress)."""
    tag = ["-m", "comment", "--comment", comment(names)]
    uplink = names.uplink_host
    rules = [["-t", "nat", "-A", "POSTROUTING", "-s", str(link), "!", "-d", str(UPLINK_POOL),
              *tag, "-j", "MASQUERADE"]]  # fmt: skip
    for chain, chain_rules in (
        ("FORWARD", gateway_egress.host_forward_rules(uplink, policy, tag)),
        ("INPUT", gateway_egress.host_input_rules(uplink, policy, tag)),
    ):
        rules += [
            ["-t", "filter", "-I", chain, str(index), *rule]
            for index, rule in enumerate(chain_rules, start=1)
        ]
    return rules


def netns_rules(names: GatewayNames, policy: EgressPolicy) -> list[list[str]]:
    """iptables arguments inside the namespace (after flushing its chains): masquerade out,
    only replies back in, no blocked destination out."""
    uplink = names.uplink_inner
    rules = [["-t", table, "-F"] for table in ("filter", "nat")]
    rules.append(["-t", "nat", "-A", "POSTROUTING", "-o", uplink, "-j", "MASQUERADE"])
    rules += [
        ["-t", "filter", "-A", *rule] for rule in gateway_egress.netns_filter_rules(uplink, policy)
    ]
    return rules


def policy_for(host: Host, resolvers: Sequence[ipaddress.IPv4Address] | None) -> EgressPolicy:
    """The egress policy for ``host``: its subnets as they are now, and its resolvers."""
    networks = gateway_egress.host_networks(host.run("ip", "-4", "-o", "addr", "show"))
    networks = [n for n in networks if not n.subnet_of(UPLINK_POOL)]
    found = gateway_egress.system_resolvers() if resolvers is None else resolvers
    return EgressPolicy.for_host(networks, found)


def _taken_links(host: Host) -> set[ipaddress.IPv4Network]:
    return set(gateway_egress.host_networks(host.run("ip", "-4", "-o", "addr", "show")))


@contextlib.contextmanager
def _pool_lock(runtime_dir: Path) -> Iterator[None]:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    with open(runtime_dir / "uplinks.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(names: GatewayNames, host: Host, in_netns: Runner) -> bool:
    """An uplink is complete once its default route is set (the last step)."""
    if not host.link_exists(names.uplink_host):
        return False
    return bool(in_netns(names.netns, "ip", "-4", "route", "show", "default").strip())


def ensure_uplink(
    names: GatewayNames,
    runtime_dir: Path,
    *,
    in_netns: Runner,
    host: Host = HOST,
    resolvers: Sequence[ipaddress.IPv4Address] | None = None,
) -> None:
    """Give the router namespace its NAT uplink (once; later calls change nothing).

    ``resolvers`` are the host resolvers the namespace's dnsmasq may ask (default: the
    host's /etc/resolv.conf)."""
    if _complete(names, host, in_netns):
        return
    remove_uplink(names, host=host)  # a half-made one (a crash between the steps)
    policy = policy_for(host, resolvers)
    with _pool_lock(runtime_dir):
        link = uplink_link(names.netns, _taken_links(host))
        host_end, inner_end = (str(a) for a in list(link.hosts())[:2])
        host.run("ip", "link", "add", names.uplink_host, "type", "veth",
                 "peer", "name", names.uplink_inner, "netns", names.netns)  # fmt: skip
        host.run("ip", "addr", "add", f"{host_end}/30", "dev", names.uplink_host)
    in_netns(names.netns, "ip", "addr", "add", f"{inner_end}/30", "dev", names.uplink_inner)
    for rule in netns_rules(names, policy):
        in_netns(names.netns, IPTABLES, *rule)
    for rule in host_rules(names, link, policy):
        host.run(IPTABLES, *rule)
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    host.run("ip", "link", "set", names.uplink_host, "up")
    in_netns(names.netns, "ip", "link", "set", names.uplink_inner, "up")
    in_netns(names.netns, "ip", "route", "add", "default", "via", host_end)


def remove_uplink(names: GatewayNames, *, host: Host = HOST) -> None:
    """Delete the host's rules for ``names.netns`` (found by comment) and its uplink veth."""
    tag = comment(names)
    for table in ("nat", "filter"):
        for line in host.run(IPTABLES, "-t", table, "-S").splitlines():
            args = shlex.split(line)
            if len(args) > 2 and args[0] == "-A" and tag in args:
                host.run(IPTABLES, "-t", table, "-D", *args[1:])
    if host.link_exists(names.uplink_host):
        host.run("ip", "link", "del", names.uplink_host)
