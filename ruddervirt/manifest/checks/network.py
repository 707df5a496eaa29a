"""VPCs, subnets, NICs and the network side of `buildOverrides`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from ruddervirt.manifest import defaults, paths
from ruddervirt.manifest.checks.base import (
    Raw,
    Reporter,
    check_unique,
    entries,
    mapping,
    names,
    string,
    suggest,
    vms,
)

MAX_NICS = 9


@dataclass(frozen=True)
class SubnetInfo:
    name: str
    path: str
    vpc: str | None
    network: IPv4Network | None  # None when the CIDR itself is invalid (reported already)
    unmanaged: bool


def check_network(report: Reporter, data: Raw) -> None:
    subnets = _check_declared_network(report, data)
    _NicChecker(report, subnets).check_vms(data)
    _check_build_overrides(report, data, subnets)


def _check_declared_network(report: Reporter, data: Raw) -> dict[str, SubnetInfo]:
    """Check `network` and return the effective subnets (the default one when undeclared)."""
    if "network" not in data:
        default = IPv4Network(defaults.SUBNET_CIDR)
        return {
            defaults.NETWORK_NAME: SubnetInfo(
                defaults.NETWORK_NAME, "", defaults.NETWORK_NAME, default, False
            )
        }
    network = mapping(data.get("network"))
    vpcs = list(entries("network.vpcs", network.get("vpcs")))
    declared = list(entries("network.subnets", network.get("subnets")))
    check_unique(report, vpcs, "VPC")
    check_unique(report, declared, "subnet")
    vpc_names = names(vpcs)
    subnets: dict[str, SubnetInfo] = {}
    for path, item in declared:
        name = string(item.get("name"))
        info = SubnetInfo(
            name or "",
            path,
            _subnet_vpc(report, path, item, vpc_names),
            _subnet_cidr(report, path, item),
            item.get("unmanaged") is True,
        )
        _check_size(report, info, paths.child(path, "cidr"))
        _check_overlap(report, info, subnets.values())
        if name is not None and name not in subnets:
            subnets[name] = info
    return subnets


def _subnet_vpc(report: Reporter, path: str, item: Raw, vpc_names: set[str]) -> str | None:
    vpc = string(item.get("vpc"))
    if vpc is not None:
        if vpc not in vpc_names:
            report.error(
                paths.child(path, "vpc"),
                f"no VPC named {vpc!r} in `network.vpcs`{suggest(vpc_names)}",
            )
            return None
        return vpc
    if len(vpc_names) == 1:
        return next(iter(vpc_names))
    if vpc_names:
        report.error(
            paths.child(path, "vpc"),
            f"required key 'vpc' is missing: the network has {len(vpc_names)} VPCs, say which one "
            "this subnet belongs to",
        )
    return None


def _subnet_cidr(report: Reporter, path: str, item: Raw) -> IPv4Network | None:
    cidr = string(item.get("cidr"))
    if cidr is None:
        return None
    cidr_path = paths.child(path, "cidr")
    try:
        network = IPv4Network(cidr)
    except ValueError:
        try:
            loose = IPv4Network(cidr, strict=False)
        except ValueError:
            return None  # malformed: the schema reported it
        report.error(
            cidr_path,
            f"{cidr} has host bits set: a network address ends in zero bits; did you mean {loose}?",
        )
        return loose
    if not _usable(network):
        report.error(
            cidr_path,
            f"{cidr} is not usable for a lab network (loopback, link-local, multicast or reserved "
            "addresses); use a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
        )
    return network


def _usable(network: IPv4Network) -> bool:
    return not (
        network.is_loopback
        or network.is_link_local
        or network.is_multicast
        or network.is_reserved
        or network.overlaps(IPv4Network("0.0.0.0/8"))
    )


def _check_size(report: Reporter, info: SubnetInfo, path: str, *, build: bool = False) -> None:
    network = info.network
    if network is None:
        return
    during = " during the build" if build else ""
    if info.unmanaged and network.prefixlen > 29:
        report.error(
            path,
            f"an unmanaged subnet needs /29 or wider (room for a guest router, its DHCP and "
            f"clients), got /{network.prefixlen} in {network}{during}",
        )
    elif not info.unmanaged and network.prefixlen > 30:
        report.error(
            path,
            f"a managed subnet needs /30 or wider (the gateway and at least one VM), got "
            f"/{network.prefixlen} in {network}{during}",
        )


def _check_overlap(report: Reporter, info: SubnetInfo, earlier: Iterable[SubnetInfo]) -> None:
    if info.network is None or info.vpc is None:
        return
    for other in earlier:
        if (
            other.vpc == info.vpc
            and other.network is not None
            and other.network.overlaps(info.network)
        ):
            report.error(
                paths.child(info.path, "cidr"),
                f"{info.network} overlaps subnet {other.name!r} ({other.network}) in VPC "
                f"{info.vpc!r}; subnets of one VPC need distinct address ranges",
            )
            return


@dataclass
class _NicChecker:
    """Checks NICs against the subnets; remembers MACs and static IPs across VMs."""

    report: Reporter
    subnets: dict[str, SubnetInfo]
    macs: dict[str, str] = field(default_factory=dict)
    ips: dict[tuple[str, IPv4Address], str] = field(default_factory=dict)

    def check_vms(self, data: Raw) -> None:
        for vm_path, vm in vms(data):
            self.check_vm(vm_path, vm)

    def check_vm(self, vm_path: str, vm: Raw) -> None:
        nics_path = f"{vm_path}.nics"
        if "nics" not in vm:
            if len(self.subnets) > 1:
                self.report.error(
                    nics_path,
                    f"declare `nics`: the network has {len(self.subnets)} subnets, so there is no "
                    "default subnet to attach this VM to",
                )
            return
        nics = list(entries(nics_path, vm.get("nics")))
        if len(nics) > MAX_NICS:
            self.report.error(
                nics_path,
                f"at most {MAX_NICS} NICs per VM (PCI slots 1-9), got {len(nics)}",
                at_key=True,
            )
        check_unique(self.report, nics, "NIC")
        check_unique(self.report, nics, "slot", key="slot")
        for nic_path, nic in nics:
            self.check_nic(nic_path, nic)

    def check_nic(self, path: str, nic: Raw) -> None:
        subnet = self._nic_subnet(path, nic)
        ip = string(nic.get("ip"))
        if ip is not None and subnet is not None:
            self._check_ip(paths.child(path, "ip"), ip, subnet)
        mac = string(nic.get("mac"))
        if mac is not None:
            self._check_mac(paths.child(path, "mac"), mac)

    def _nic_subnet(self, path: str, nic: Raw) -> SubnetInfo | None:
        name = string(nic.get("subnet"))
        if name is None:
            if len(self.subnets) == 1:
                return next(iter(self.subnets.values()))
            if self.subnets:
                self.report.error(
                    paths.child(path, "subnet"),
                    f"required key 'subnet' is missing: the network has {len(self.subnets)} "
                    "subnets, say which one this NIC is on",
                )
            return None
        if name not in self.subnets:
            self.report.error(
                paths.child(path, "subnet"), f"no subnet named {name!r}{suggest(self.subnets)}"
            )
            return None
        return self.subnets[name]

    def _check_ip(self, path: str, ip: str, subnet: SubnetInfo) -> None:
        try:
            address = IPv4Address(ip)
        except ValueError:
            return  # the schema reported it
        network = subnet.network
        if network is None:
            return
        where = f"subnet {subnet.name!r} ({network})"
        if address not in network:
            self.report.error(path, f"{ip} is outside {where}")
        elif address == network.network_address:
            self.report.error(path, f"{ip} is the network address of {where}; pick a host address")
        elif address == network.broadcast_address:
            self.report.error(
                path, f"{ip} is the broadcast address of {where}; pick a host address"
            )
        elif not subnet.unmanaged and address == network.network_address + 1:
            self.report.error(
                path,
                f"{ip} is the gateway and DNS server of {where}: RudderVirt's managed subnets use "
                "the first host address for it; pick another address",
            )
        elif (subnet.name, address) in self.ips:
            self.report.error(path, f"{ip} is already used by {self.ips[subnet.name, address]}")
        else:
            self.ips[subnet.name, address] = path.removesuffix(".ip")

    def _check_mac(self, path: str, mac: str) -> None:
        normalized = mac.lower()
        try:
            first_octet = int(normalized[:2], 16)
        except ValueError:
            return  # the schema reported it
        if first_octet & 1:
            self.report.error(
                path,
                f"{mac} is a multicast address (the first octet is odd); a NIC needs a unicast "
                "MAC such as 52:54:00:xx:xx:xx",
            )
        elif normalized in self.macs:
            self.report.error(path, f"MAC {mac} is already used by {self.macs[normalized]}")
        else:
            self.macs[normalized] = path.removesuffix(".mac")


def _check_build_overrides(report: Reporter, data: Raw, subnets: dict[str, SubnetInfo]) -> None:
    overrides = mapping(data.get("buildOverrides"))
    if not overrides:
        return
    vpc_names = _effective_vpcs(data)
    vpcs = list(entries("buildOverrides.vpcs", overrides.get("vpcs")))
    _check_override_refs(report, vpcs, "VPC", vpc_names)
    subnet_overrides = list(entries("buildOverrides.subnets", overrides.get("subnets")))
    _check_override_refs(report, subnet_overrides, "subnet", set(subnets))
    vm_overrides = list(entries("buildOverrides.vms", overrides.get("vms")))
    _check_override_refs(report, vm_overrides, "VM", names(vms(data)))
    build_subnets = dict(subnets)
    for path, item in subnet_overrides:
        name, unmanaged = string(item.get("name")), item.get("unmanaged")
        if name in build_subnets and isinstance(unmanaged, bool):
            build_subnets[name] = replace(build_subnets[name], unmanaged=unmanaged)
            _check_size(report, build_subnets[name], paths.child(path, "unmanaged"), build=True)
    _check_build_nics(report, data, build_subnets, vm_overrides)


def _effective_vpcs(data: Raw) -> set[str]:
    if "network" not in data:
        return {defaults.NETWORK_NAME}
    return names(entries("network.vpcs", mapping(data.get("network")).get("vpcs")))


def _check_override_refs(
    report: Reporter, items: list[tuple[str, Raw]], what: str, known: set[str]
) -> None:
    check_unique(report, items, f"override for {what}")
    for path, item in items:
        name = string(item.get("name"))
        if name is not None and name not in known:
            report.error(paths.child(path, "name"), f"no {what} named {name!r}{suggest(known)}")


def _check_build_nics(
    report: Reporter, data: Raw, subnets: dict[str, SubnetInfo], vm_overrides: list[tuple[str, Raw]]
) -> None:
    """The NICs the build uses: overridden ones must be valid among the others as well."""
    replaced = {string(o.get("name")): (p, o) for p, o in vm_overrides if "nics" in o}
    # Seed with the NICs kept from the base (already reported there), silently.
    seed = _NicChecker(Reporter(report.index), subnets)
    for vm_path, vm in vms(data):
        if string(vm.get("name")) not in replaced:
            seed.check_vm(vm_path, vm)
    checker = _NicChecker(report, subnets, seed.macs, seed.ips)
    for path, override in replaced.values():
        checker.check_vm(path, override)
