"""From a manifest's VPCs, subnets and NICs to libvirt networks and NIC assignments.

Each subnet becomes one libvirt network whose name is unique to the build or clone that
owns it (the `owner` key), so two clones with identical CIDRs never meet. Managed subnets
get the first host address as gateway and DNS server, DHCP with a fixed MAC -> IP entry
for every NIC (static `ip`s as declared, the others a stable address from the top of the
subnet), and DNS that resolves every VM of the VPC by name. Unmanaged subnets are a bare
bridge. Subnets never route to each other; `internet` becomes NAT only where the host
allows it (never on test machines).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import DhcpHost, DnsHost, NetworkSpec


@dataclass(frozen=True)
class NicPlan:
    vm: str
    name: str
    subnet: str
    network: str  # libvirt network name
    slot: int | None
    mac: str
    ip: str | None  # None on unmanaged subnets without a static ip
    static: bool
    model: str

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


def _dynamic_pool(net: ipaddress.IPv4Network, taken: set) -> list:
    """Addresses for NICs without a static ip: from the top down, skipping taken ones."""
    hosts = list(net.hosts())[1:]  # the first host address is the gateway
    return [h for h in reversed(hosts) if h not in taken]


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
    sees the addresses of the build); other NICs get a MAC from `new_mac`.
    """
    macs = dict(macs or {})
    ips = dict(ips or {})
    warnings: list[str] = []
    subnets = {s.name: s for s in manifest.network.subnets}
    vpcs = {v.name: v for v in manifest.network.vpcs}

    nics: dict[str, list[NicPlan]] = {}
    taken: dict[str, set] = {name: set() for name in subnets}
    for vm in manifest.vms:
        for nic in vm.nics:
            if nic.ip:
                taken[nic.subnet].add(ipaddress.IPv4Address(nic.ip))
    for (vm_name, nic_name), ip in ips.items():
        subnet = next(
            (
                n.subnet
                for v in manifest.vms
                if v.name == vm_name
                for n in v.nics
                if n.name == nic_name
            ),
            None,
        )
        if subnet and ip:
            taken[subnet].add(ipaddress.IPv4Address(ip))
    pools = {
        name: _dynamic_pool(ipaddress.IPv4Network(s.cidr), taken[name])
        for name, s in subnets.items()
        if not s.unmanaged
    }
    for vm in manifest.vms:
        planned = []
        for nic in vm.nics:
            subnet = subnets[nic.subnet]
            mac = (nic.mac or macs.get((vm.name, nic.name)) or new_mac()).lower()
            ip = nic.ip or ips.get((vm.name, nic.name))
            if ip is None and not subnet.unmanaged:
                if not pools[nic.subnet]:
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

    networks = []
    for subnet in manifest.network.subnets:
        vpc = vpcs[subnet.vpc]
        name = network_name(prefix, owner, subnet.name)
        common = {"name": name, "bridge": bridge_name_for(name), "metadata": dict(metadata or {})}
        if subnet.unmanaged:
            networks.append(NetworkSpec(**common))
            continue
        net = ipaddress.IPv4Network(subnet.cidr)
        gateway = next(net.hosts())
        nat = bool(vpc.internet and allow_internet)
        if vpc.internet and not allow_internet:
            warnings.append(
                f"VPC {vpc.name} asks for internet, but this host gives VMs none "
                f"(RUDDERVIRT_ALLOW_INTERNET=false): subnet {subnet.name} is isolated"
            )
        members = [p for plans in nics.values() for p in plans if p.subnet == subnet.name]
        vpc_members = [
            p
            for plans in nics.values()
            for p in plans
            if p.ip and vpcs[subnets[p.subnet].vpc].name == vpc.name
        ]
        dns_hosts = _dns_hosts(vpc_members)
        dhcp_hosts = tuple(
            DhcpHost(p.mac, ipaddress.IPv4Address(p.ip), p.vm) for p in members if p.ip
        )
        dhcp_range = None
        if subnet.dhcp:
            hosts = list(net.hosts())
            dhcp_range = (hosts[1], hosts[-1]) if len(hosts) > 1 else None
        networks.append(
            NetworkSpec(
                **common,
                ipv4=ipaddress.IPv4Interface(f"{gateway}/{net.prefixlen}"),
                dhcp_range=dhcp_range,
                dhcp_hosts=dhcp_hosts if subnet.dhcp else (),
                dns_hosts=dns_hosts,
                nat=nat,
            )
        )
    return Topology(
        networks=tuple(networks),
        nics={k: tuple(v) for k, v in nics.items()},
        warnings=tuple(warnings),
    )


def _dns_hosts(members: list[NicPlan]) -> tuple[DnsHost, ...]:
    """Every VM of the VPC by name; a VM with several NICs answers with its first address."""
    seen: dict[str, str] = {}
    for p in members:
        seen.setdefault(p.vm, p.ip)
    by_ip: dict[str, list[str]] = {}
    for vm, ip in seen.items():
        by_ip.setdefault(ip, []).append(vm)
    return tuple(DnsHost(ipaddress.IPv4Address(ip), tuple(names)) for ip, names in by_ip.items())
