"""From a manifest's VPCs, subnets and NICs to libvirt networks and NIC assignments.

Each subnet becomes one libvirt network whose name is unique to the build or clone that
owns it (the `owner` key), so two clones with identical CIDRs never meet. Managed subnets
get the first host address as gateway (router and DNS server), DHCP with a fixed MAC -> IP
entry for every NIC (static `ip`s as declared, the others a stable address taken from the
top of the subnet down), the subnet's `dns` servers handed out after the gateway, and DNS
that resolves every VM of the VPC by name. The managed subnets of one VPC share one router
(`NetworkSpec.router`): they reach each other, and nothing else; `internet` becomes NAT on
that router only where the host allows it (never on test machines). Unmanaged subnets are a
bare bridge. See docs/networking.md.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import DhcpHost, DnsHost, NetworkSpec, NicModel


@dataclass(frozen=True)
class NicPlan:
    vm: str
    name: str
    subnet: str
    network: str  # libvirt network name
    slot: int | None
    mac: str
    ip: str | None  # None on unmanaged subnets, and on managed ones without DHCP, unless static
    static: bool
    model: NicModel

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "slot": self.slot,
            "mac": self.mac,
            "ip": self.ip,
            "static": self.static,
            "model": self.model,
        }


@dataclass(frozen=True)
class Topology:
    networks: tuple[NetworkSpec, ...]
    nics: Mapping[str, tuple[NicPlan, ...]]  # by VM name, in manifest order
    warnings: tuple[str, ...] = ()


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def network_name(prefix: str, owner: str, subnet: str) -> str:
    return f"{prefix}{owner}-{subnet}"[:80]


def router_name(prefix: str, owner: str, vpc: str) -> str:
    """The key of a VPC's router: the managed subnets of one VPC of one owner share it."""
    return f"{prefix}{owner}-vpc-{vpc}"[:80]


def _dynamic_pool(net: ipaddress.IPv4Network, taken: set) -> list:
    """Addresses for NICs without a static ip: from the top down, skipping taken ones."""
    hosts = list(net.hosts())[1:]  # the first host address is the gateway
    return [h for h in reversed(hosts) if h not in taken]


def _pinned_ip(subnet, pinned: str | None) -> str | None:
    """A clone's pinned address, when it still fits the subnet (managed, DHCP, in range)."""
    if not pinned or subnet.unmanaged or not subnet.dhcp:
        return None
    if ipaddress.IPv4Address(pinned) not in ipaddress.IPv4Network(subnet.cidr):
        return None
    return pinned


def plan(
    manifest,
    *,
    owner: str,
    prefix: str,
    allow_internet: bool,
    macs: Mapping[tuple[str, str], str] | None = None,
    ips: Mapping[tuple[str, str], str] | None = None,
    metadata: Mapping[str, str] | None = None,
    new_mac: Callable[[], str] = random_mac,
) -> Topology:
    """Plan the networks and NICs of `manifest` for the build or clone `owner`.

    `macs`/`ips` pin addresses by (vm, nic) (a clone passes its template's, so every clone
    sees the addresses of the build); other NICs get a MAC from `new_mac`, never one that
    is already used in the module. A pinned ip is ignored where the NIC's subnet no longer
    hands out addresses (unmanaged, no DHCP) or no longer contains it."""
    subnets = {s.name: s for s in manifest.network.subnets}
    nics = _plan_nics(manifest, subnets, owner, prefix, dict(macs or {}), dict(ips or {}), new_mac)
    return networks_for(
        manifest.network,
        {k: tuple(v) for k, v in nics.items()},
        owner=owner,
        prefix=prefix,
        allow_internet=allow_internet,
        metadata=metadata,
    )


def networks_for(
    network,
    nics: Mapping[str, tuple[NicPlan, ...]],
    *,
    owner: str,
    prefix: str,
    allow_internet: bool,
    metadata: Mapping[str, str] | None = None,
) -> Topology:
    """The networks of `network` (a manifest's, or a version's TopologyRecord: VPCs and
    subnets) for NICs whose MACs and addresses are already resolved."""
    networks, warnings = [], []
    for subnet in network.subnets:
        spec, warning = _network(network, subnet, nics, owner, prefix, allow_internet, metadata)
        networks.append(spec)
        if warning and warning not in warnings:
            warnings.append(warning)
    return Topology(networks=tuple(networks), nics=dict(nics), warnings=tuple(warnings))


def _plan_nics(manifest, subnets, owner, prefix, macs, ips, new_mac) -> dict[str, list[NicPlan]]:
    pinned = {
        (vm.name, nic.name): _pinned_ip(subnets[nic.subnet], ips.get((vm.name, nic.name)))
        for vm in manifest.vms
        for nic in vm.nics
        if not nic.ip
    }
    taken: dict[str, set] = {name: set() for name in subnets}
    for vm in manifest.vms:
        for nic in vm.nics:
            address = nic.ip or pinned.get((vm.name, nic.name))
            if address:
                taken[nic.subnet].add(ipaddress.IPv4Address(address))
    pools = {
        name: _dynamic_pool(ipaddress.IPv4Network(s.cidr), taken[name])
        for name, s in subnets.items()
        if not s.unmanaged and s.dhcp
    }
    used_macs = {m.lower() for m in macs.values()} | {
        nic.mac for vm in manifest.vms for nic in vm.nics if nic.mac
    }
    nics: dict[str, list[NicPlan]] = {}
    for vm in manifest.vms:
        planned = []
        for nic in vm.nics:
            key = (vm.name, nic.name)
            mac = (nic.mac or macs.get(key) or _fresh_mac(new_mac, used_macs)).lower()
            ip = nic.ip or pinned.get(key)
            if ip is None and nic.subnet in pools:
                if not pools[nic.subnet]:
                    subnet = subnets[nic.subnet]
                    raise ValueError(
                        f"subnet {subnet.name} ({subnet.cidr}) has no free address for {vm.name}"
                    )
                ip = str(pools[nic.subnet].pop(0))
            planned.append(
                NicPlan(
                    vm=vm.name,
                    name=nic.name,
                    subnet=nic.subnet,
                    network=network_name(prefix, owner, nic.subnet),
                    slot=nic.slot,
                    mac=mac,
                    ip=str(ip) if ip else None,
                    static=bool(nic.ip),
                    model=nic.model,
                )
            )
        nics[vm.name] = planned
    return nics


def _fresh_mac(new_mac: Callable[[], str], used: set[str]) -> str:
    for _attempt in range(100):
        mac = new_mac().lower()
        if mac not in used:
            used.add(mac)
            return mac
    raise ValueError("could not generate a MAC address that is not already used")


def _network(network, subnet, nics, owner, prefix, allow_internet, metadata):
    """The NetworkSpec of one subnet, and a warning when its VPC's internet is refused."""
    name = network_name(prefix, owner, subnet.name)
    common = {
        "name": name,
        "bridge": bridge_name_for(name),
        "metadata": {**dict(metadata or {}), "subnet": subnet.name},
    }
    if subnet.unmanaged:
        return NetworkSpec(**common), None
    vpc = network.vpc(subnet.vpc)
    warning = None
    if vpc.internet and not allow_internet:
        warning = (
            f"VPC {vpc.name} asks for internet, but this host gives VMs none "
            f"(RUDDERVIRT_ALLOW_INTERNET=false): its subnets are isolated"
        )
    net = ipaddress.IPv4Network(subnet.cidr)
    members = [p for plans in nics.values() for p in plans if p.subnet == subnet.name and p.ip]
    dhcp_range, dhcp_hosts = None, ()
    if subnet.dhcp:
        hosts = list(net.hosts())
        dhcp_range = (hosts[1], hosts[-1]) if len(hosts) > 1 else None
        dhcp_hosts = tuple(DhcpHost(p.mac, ipaddress.IPv4Address(p.ip), p.vm) for p in members)
    spec = NetworkSpec(
        **common,
        ipv4=ipaddress.IPv4Interface(f"{subnet.gateway}/{net.prefixlen}"),
        dhcp_range=dhcp_range,
        dhcp_hosts=dhcp_hosts,
        dns_hosts=_dns_hosts(network, subnet, nics),
        dns_servers=tuple(ipaddress.IPv4Address(a) for a in subnet.dns),
        nat=bool(vpc.internet and allow_internet),
        router=router_name(prefix, owner, vpc.name),
    )
    return spec, warning


def _dns_hosts(network, subnet, nics) -> tuple[DnsHost, ...]:
    """Every VM with an address in a managed subnet of this subnet's VPC, by name: its
    address in this subnet when it has one (no detour through the router), else its first
    address in the VPC. Addresses on unmanaged subnets are left out: the VPC's router cannot
    reach those segments."""
    managed = {s.name for s in network.subnets if s.vpc == subnet.vpc and not s.unmanaged}
    chosen: dict[str, str] = {}
    for plans in nics.values():
        in_vpc = [p for p in plans if p.ip and p.subnet in managed]
        local = [p for p in in_vpc if p.subnet == subnet.name]
        if in_vpc:
            chosen[in_vpc[0].vm] = (local or in_vpc)[0].ip
    by_ip: dict[str, list[str]] = {}
    for vm, ip in chosen.items():
        by_ip.setdefault(ip, []).append(vm)
    return tuple(DnsHost(ipaddress.IPv4Address(ip), tuple(names)) for ip, names in by_ip.items())
