"""What a guest's NAT egress may not reach, as iptables rules (pure: no command runs here).

A router namespace with an uplink (see :mod:`ruddervirt.hypervisor.gateway_nat`) forwards its
guests' traffic to the host, which sends it out of its own default route. Without more rules
that route leads everywhere the host can go: its LAN, a cloud's metadata service at
169.254.169.254, other tenants behind CGNAT, the host's own services. So every destination in
:data:`BLOCKED_NETWORKS`, and every subnet the host itself has an address in, is dropped, in two
places:

* in the router namespace (only RudderVirt touches its rules): forwarded traffic leaving by
  the uplink, and the namespace's own traffic (its dnsmasq) leaving by the uplink;
* on the host, for traffic entering from the uplink (in case the namespace rules were lost).

Traffic inside the VPC is not touched: the rules match only packets that leave by the uplink,
so the gateway's DHCP and DNS (addressed to the namespace itself) and routing between the
VPC's subnets (out of their own interfaces) work as before.

One exception: the gateway's dnsmasq forwards the names it does not know to the host's own
resolvers (``/etc/resolv.conf``), which often sit in a private range (a LAN router, a cloud's
VPC resolver). Port 53 of exactly those addresses stays open to the namespace's own traffic and
to the host's forwarding of it; a guest that addresses them directly is still dropped.

IPv6 needs no rules: router namespaces have IPv6 disabled and the uplink is IPv4 only, so a
guest's IPv6 never leaves its bridge (which has no host address either).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address

# Never reachable through the uplink. TEST-NET ranges (192.0.2.0/24, 198.51.100.0/24,
# 203.0.113.0/24) are not listed: they are never routed anywhere, and the tests use one of them
# as "the internet".
BLOCKED_NETWORKS: tuple[IPv4Net, ...] = tuple(
    IPv4Net(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT (RFC 6598); also every router's uplink
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254), APIPA
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking, used inside some networks
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast 255.255.255.255
    )
)
DNS_PORT = "53"


@dataclass(frozen=True)
class EgressPolicy:
    """Where guests' egress may not go, and which host resolvers their gateway may ask."""

    blocked: tuple[IPv4Net, ...]
    resolvers: tuple[IPv4Addr, ...]  # blocked addresses open on port 53 to the gateway only

    @classmethod
    def for_host(
        cls, host_networks: Iterable[IPv4Net], resolvers: Iterable[IPv4Addr]
    ) -> EgressPolicy:
        """The policy for a host with addresses in ``host_networks`` and these resolvers."""
        blocked = list(BLOCKED_NETWORKS)
        for net in sorted(set(host_networks)):
            if not any(net.subnet_of(b) for b in blocked):
                blocked.append(net)
        kept = [r for r in dict.fromkeys(resolvers) if any(r in b for b in blocked)]
        # A loopback resolver is the host's own: the namespace cannot reach it anyway.
        return cls(tuple(blocked), tuple(r for r in kept if not r.is_loopback))


def host_networks(ip_addr_output: str) -> list[IPv4Net]:
    """The subnets of the host's IPv4 addresses, from ``ip -4 -o addr show`` output."""
    found = []
    for line in ip_addr_output.splitlines():
        words = line.split()
        if "inet" in words:
            found.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return found


def resolvers(resolv_conf: str) -> list[IPv4Addr]:
    """The IPv4 ``nameserver`` addresses of a resolv.conf text."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(IPv4Addr(words[1]))
            except ValueError:
                continue  # IPv6 resolvers: the uplink is IPv4 only
    return found


def system_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[IPv4Addr]:
    """The resolvers the gateways' dnsmasq uses when a VPC has NAT and no forwarders."""
    try:
        return resolvers(path.read_text())
    except OSError:
        return []


def _dns(direction: str, iface: str, resolver: IPv4Addr, tag: Sequence[str]) -> list[list[str]]:
    return [
        [direction, iface, "-d", str(resolver), "-p", proto, "--dport", DNS_PORT, *tag,
         "-j", "ACCEPT"]
        for proto in ("udp", "tcp")
    ]  # fmt: skip


def netns_filter_rules(uplink: str, policy: EgressPolicy) -> list[list[str]]:
    """``iptables -t filter -A`` arguments for the router namespace, in order.

    Nothing enters from the uplink but replies; guests' traffic leaving by the uplink never
    goes to a blocked network; the namespace's own (dnsmasq's) traffic only to the resolvers'
    port 53 among them."""
    established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]
    rules = [
        ["INPUT", "-i", uplink, *established],
        ["INPUT", "-i", uplink, "-j", "DROP"],
        ["FORWARD", "-i", uplink, *established],
        ["FORWARD", "-i", uplink, "-j", "DROP"],
    ]
    rules += [["FORWARD", "-o", uplink, "-d", str(net), "-j", "DROP"] for net in policy.blocked]
    for resolver in policy.resolvers:
        rules += [["OUTPUT", *rule] for rule in _dns("-o", uplink, resolver, ())]
    rules += [["OUTPUT", "-o", uplink, "-d", str(net), "-j", "DROP"] for net in policy.blocked]
    return rules


def host_forward_rules(uplink: str, policy: EgressPolicy, tag: Sequence[str]) -> list[list[str]]:
    """The host's FORWARD rules for one uplink, in their final order (top first).

    Replies back into the uplink, nothing else into it; out of it the resolvers' port 53,
    then nothing to a blocked network or another uplink, then anywhere."""
    rules = [
        ["-o", uplink, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag,
         "-j", "ACCEPT"],
        ["-o", uplink, *tag, "-j", "DROP"],
    ]  # fmt: skip
    for resolver in policy.resolvers:
        rules += _dns("-i", uplink, resolver, tag)
    rules += [["-i", uplink, "-d", str(net), *tag, "-j", "DROP"] for net in policy.blocked]
    rules += [
        ["-i", uplink, "-o", "rvu+", *tag, "-j", "DROP"],
        ["-i", uplink, *tag, "-j", "ACCEPT"],
    ]
    return rules


def host_input_rules(uplink: str, policy: EgressPolicy, tag: Sequence[str]) -> list[list[str]]:
    """The host's INPUT rules for one uplink, top first: nothing reaches the host itself but
    the resolvers' port 53 (when the host is its own resolver)."""
    rules = []
    for resolver in policy.resolvers:
        rules += _dns("-i", uplink, resolver, tag)
    return [*rules, ["-i", uplink, *tag, "-j", "DROP"]]
