"""A guest with internet cannot reach the host's LAN, metadata service, CGNAT neighbours or the
host itself; the internet it can. Run for real, entirely in network namespaces this test makes:

    G (guest 10.10.0.254) ── R (router: 10.10.0.1, dnsmasq stand-in; 10.10.1.1 ── G2)
                               │ uplink made by gateway_nat.ensure_uplink
                               H (stand-in host: 198.51.100.2 ── I, 192.168.50.1 ── L)
    I (the "internet"): 198.51.100.1, 203.0.113.10 (the public address)
    L (the host's LAN): 192.168.50.10, a resolver at 192.168.50.53, and behind it 10.20.30.40,
                        172.16.5.5, 100.100.100.100 (CGNAT), 169.254.169.254 (metadata)

Nothing runs on the host's own network stack: every command goes into one of these namespaces,
and no namespace has a route to the real outside.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ruddervirt.hypervisor import gateway, gateway_nat
from ruddervirt.hypervisor.gateway_names import GatewayNames

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PROBE = Path(__file__).with_name("netprobe.py")
WEB, DNS = 8080, 53
PUBLIC = "203.0.113.10"
RESOLVER = "192.168.50.53"
BEHIND_LAN = ("10.20.30.40", "172.16.5.5", "100.100.100.100", "169.254.169.254")
TIMEOUT_S = 20


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=TIMEOUT_S, capture_output=True)


def in_ns(ns: str, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *args], check=True, timeout=TIMEOUT_S, capture_output=True
    )
    return done.stdout.decode()


@dataclass
class World:
    """The namespaces by role, the uplink's names and the listeners serving in them."""

    ns: dict[str, str]
    names: GatewayNames
    host: gateway_nat.Host
    listeners: list[subprocess.Popen]

    def probe(self, role: str, *targets: str) -> dict[str, bool]:
        out = in_ns(self.ns[role], sys.executable, str(PROBE), "probe", "2", *targets)
        return json.loads(out)

    def uplink_host_address(self) -> str:
        out = in_ns(
            self.ns["host"], "ip", "-4", "-o", "addr", "show", "dev", self.names.uplink_host
        )
        return out.split()[3].split("/")[0]


def _veth(ns: str, name: str, peer_ns: str, peer: str, addr: str, peer_addrs: list[str]) -> None:
    ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns)
    ip("-n", ns, "addr", "add", addr, "dev", name)
    ip("-n", ns, "link", "set", name, "up")
    for peer_addr in peer_addrs:
        ip("-n", peer_ns, "addr", "add", peer_addr, "dev", peer)
    ip("-n", peer_ns, "link", "set", peer, "up")


def _build(ns: dict[str, str]) -> None:
    for name in ns.values():
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
    host, lan, router = ns["host"], ns["lan"], ns["router"]
    _veth(host, "wan", ns["inet"], "eth0", "198.51.100.2/24", ["198.51.100.1/24"])
    ip("-n", ns["inet"], "addr", "add", f"{PUBLIC}/32", "dev", "lo")
    ip("-n", host, "route", "add", "default", "via", "198.51.100.1")
    _veth(host, "lan", lan, "eth0", "192.168.50.1/24", ["192.168.50.10/24", f"{RESOLVER}/24"])
    ip("-n", lan, "route", "add", "default", "via", "192.168.50.1")
    for addr in BEHIND_LAN:
        ip("-n", lan, "addr", "add", f"{addr}/32", "dev", "lo")
        ip("-n", host, "route", "add", f"{addr}/32", "via", "192.168.50.10")
    # The router as gateway._ensure_router leaves it: no IPv6, forwarding between subnets.
    for key in ("all", "default"):
        in_ns(router, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    in_ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _veth(router, "s0", ns["guest"], "eth0", "10.10.0.1/24", ["10.10.0.254/24"])
    _veth(router, "s1", ns["guest2"], "eth0", "10.10.1.1/24", ["10.10.1.254/24"])
    ip("-n", ns["guest"], "route", "add", "default", "via", "10.10.0.1")
    ip("-n", ns["guest2"], "route", "add", "default", "via", "10.10.1.1")


def _listen(ns: str, addrs: tuple[str, ...], *ports: int) -> subprocess.Popen:
    argv = [sys.executable, str(PROBE), "listen", ",".join(addrs), *map(str, ports)]
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    tag = f"rvt-eg{os.getpid()}"
    roles = ("host", "inet", "lan", "router", "guest", "guest2")
    ns = {role: f"{tag}-{role}" for role in roles}
    names = GatewayNames(netns=ns["router"], host_veth="-", inner="-", uplink_host="rvuegress")
    world = World(ns, names, gateway_nat.Host(ns["host"]), [])
    try:
        _build(ns)
        runtime = tmp_path_factory.mktemp("gateways")
        gateway_nat.ensure_uplink(
            names,
            runtime,
            in_netns=gateway._in_netns,
            host=world.host,
            resolvers=[ipaddress.IPv4Address(RESOLVER)],
        )
        lan = ("192.168.50.10", RESOLVER, *BEHIND_LAN)
        host = ("198.51.100.2", "192.168.50.1", world.uplink_host_address())
        world.listeners += [
            _listen(ns["inet"], (PUBLIC, "198.51.100.1"), WEB),
            _listen(ns["lan"], lan, WEB, DNS),
            _listen(ns["host"], host, WEB),
            _listen(ns["router"], ("10.10.0.1",), DNS),
            _listen(ns["guest2"], ("10.10.1.254",), WEB),
        ]
        yield world
    finally:
        for process in world.listeners:
            process.kill()
            process.wait(timeout=TIMEOUT_S)
        for name in ns.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", name)


def lan_targets() -> list[str]:
    addrs = ["192.168.50.10", *BEHIND_LAN]
    return [f"{proto}:{a}:{WEB}" for a in addrs for proto in ("tcp", "udp")]


def test_a_guest_with_internet_reaches_the_public_address(world: World) -> None:
    seen = world.probe("guest", f"tcp:{PUBLIC}:{WEB}", f"udp:{PUBLIC}:{WEB}")
    assert all(seen.values()), seen


def test_a_guest_cannot_reach_the_hosts_lan_metadata_or_cgnat(world: World) -> None:
    seen = world.probe("guest", *lan_targets())
    assert not any(seen.values()), {t: ok for t, ok in seen.items() if ok}


def test_a_guest_cannot_reach_the_host_itself_nor_its_public_subnet(world: World) -> None:
    uplink = world.uplink_host_address()
    addrs = ("198.51.100.2", "192.168.50.1", uplink, "198.51.100.1")  # the last: a neighbour
    seen = world.probe("guest", *(f"tcp:{a}:{WEB}" for a in addrs))
    assert not any(seen.values()), seen


def test_a_guest_cannot_use_the_hosts_resolver_directly(world: World) -> None:
    seen = world.probe("guest", f"udp:{RESOLVER}:{DNS}", f"tcp:{RESOLVER}:{DNS}")
    assert not any(seen.values()), seen


def test_the_gateway_still_serves_its_guests_and_routes_between_the_vpcs_subnets(
    world: World,
) -> None:
    seen = world.probe("guest", f"udp:10.10.0.1:{DNS}", f"tcp:10.10.1.254:{WEB}")
    assert all(seen.values()), seen


def test_the_gateways_dnsmasq_may_ask_the_hosts_resolver_and_nothing_else_private(
    world: World,
) -> None:
    allowed = world.probe("router", f"udp:{RESOLVER}:{DNS}", f"tcp:{RESOLVER}:{DNS}")
    assert all(allowed.values()), allowed
    refused = world.probe(
        "router", f"tcp:{RESOLVER}:{WEB}", f"udp:192.168.50.10:{DNS}", f"tcp:169.254.169.254:{WEB}"
    )
    assert not any(refused.values()), refused


def test_each_layer_alone_keeps_the_lan_out(world: World, tmp_path: Path) -> None:
    """Host rules lost (someone flushed the host's firewall): the namespace still drops.
    Namespace rules lost: the host still drops. The public address stays reachable."""
    targets = [f"tcp:{PUBLIC}:{WEB}", *lan_targets()]
    in_ns(world.ns["host"], "iptables", "-t", "filter", "-F")
    seen = world.probe("guest", *targets)
    assert seen.pop(targets[0]) and not any(seen.values()), seen
    remake_uplink(world, tmp_path)
    in_ns(world.ns["router"], "iptables", "-t", "filter", "-F")
    seen = world.probe("guest", *targets)
    assert seen.pop(targets[0]) and not any(seen.values()), seen
    remake_uplink(world, tmp_path)  # both layers again, for the tests after this one


def remake_uplink(world: World, runtime: Path) -> None:
    gateway_nat.remove_uplink(world.names, host=world.host)
    gateway_nat.ensure_uplink(
        world.names, runtime, in_netns=gateway._in_netns, host=world.host,
        resolvers=[ipaddress.IPv4Address(RESOLVER)],
    )  # fmt: skip


def test_removing_the_uplink_leaves_no_rule_and_no_link_on_the_host(world: World) -> None:
    host = world.ns["host"]
    gateway_nat.remove_uplink(world.names, host=world.host)
    rules = "".join(in_ns(host, "iptables", "-t", table, "-S") for table in ("filter", "nat"))
    assert gateway_nat.comment(world.names) not in rules
    assert not world.host.link_exists(world.names.uplink_host)
