"""cloud-init network config (version 2) for a VM's NICs and its management NIC.

Static `ip`s are configured as such (so they work even on subnets without DHCP), with the
gateway and the subnet's `dns` servers as name servers, and the default route through the
first managed subnet's gateway. Other NICs use DHCP, except on a managed subnet with
`dhcp: false`, where nobody would answer: those come up without an address. The management
NIC (QEMU user-mode, restrict=on) only carries the host's SSH forward: it takes DHCP but
never the default route or DNS.

Default routes are spelled ``0.0.0.0/0`` (``::/0`` for IPv6), never ``default``: cloud-init 22.4
(Debian 12) rejects ``to: default`` ("Address default is not a valid ip network") and then
brings no NIC up. An instructor's own v2 networkData is rewritten the same way.

:func:`name_servers` reads back the name servers a rendered config hands the guest's NICs:
guests that configure a static NIC with ifupdown and have no `resolvconf` (Debian 12's cloud
images) never apply them, so the seed also writes them to /etc/resolv.conf
(ruddervirt.hypervisor.seed.resolv_conf_bootcmd).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol

import yaml

from ruddervirt.engine.topology import NicPlan

MGMT_KEY = "rvmgmt"
DEFAULT_ROUTE_V4 = "0.0.0.0/0"
DEFAULT_ROUTE_V6 = "::/0"
V2_DEVICE_KINDS = ("ethernets", "bonds", "bridges", "vlans")
MAX_NAME_SERVERS = 3  # the resolver reads no more (glibc's MAXNS)


class NicLike(Protocol):
    """What rendering needs of a NIC: a NicPlan (builds) or a NicRecord (clones)."""

    @property
    def subnet(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def static(self) -> bool: ...


def default_route_for(via: object) -> str:
    """The destination a ``to: default`` route means: ``::/0`` via an IPv6 gateway, else
    ``0.0.0.0/0``."""
    try:
        version = ipaddress.ip_address(str(via)).version
    except ValueError:
        version = 4
    return DEFAULT_ROUTE_V6 if version == 6 else DEFAULT_ROUTE_V4


def spell_out_default_routes(data: dict) -> None:
    """Rewrite every ``to: default`` route of a v2 config in place (see the module docstring)."""
    for kind in V2_DEVICE_KINDS:
        devices = data.get(kind)
        for entry in devices.values() if isinstance(devices, dict) else ():
            routes = entry.get("routes") if isinstance(entry, dict) else None
            for route in routes if isinstance(routes, list) else ():
                if isinstance(route, dict) and route.get("to") == "default":
                    route["to"] = default_route_for(route.get("via"))


def _mgmt_entry(mac: str) -> dict:
    return {
        "match": {"macaddress": mac},
        "dhcp4": True,
        "dhcp4-overrides": {"use-routes": False, "use-dns": False},
        "optional": True,
    }


def _nic_entry(nic: NicLike, subnet, first_gateway: list) -> dict:
    entry: dict = {"match": {"macaddress": nic.mac}}
    if nic.static and nic.ip:
        net = ipaddress.IPv4Network(subnet.cidr)
        entry["addresses"] = [f"{nic.ip}/{net.prefixlen}"]
        if subnet.unmanaged:
            if subnet.dns:
                entry["nameservers"] = {"addresses": list(subnet.dns)}
            return entry
        gateway = subnet.gateway
        entry["nameservers"] = {"addresses": [gateway, *subnet.dns]}
        if not first_gateway:  # one default route: through the first managed NIC
            first_gateway.append(gateway)
            entry["routes"] = [{"to": DEFAULT_ROUTE_V4, "via": gateway}]
    elif not subnet.unmanaged and not subnet.dhcp:
        entry["dhcp4"] = False  # nobody answers DHCP here: the guest sets an address itself
        entry["optional"] = True
    else:
        entry["dhcp4"] = True
        if subnet.unmanaged:
            entry["optional"] = True  # a guest router may or may not serve DHCP there
    return entry


def render(nics: tuple[NicPlan, ...], manifest, *, mgmt_mac: str, user_network: str | None) -> str:
    """The seed's `network-config` for a build VM (the manifest's subnets); see
    render_for_subnets."""
    return render_for_subnets(
        nics, manifest.network.subnets, mgmt_mac=mgmt_mac, user_network=user_network
    )


def render_for_subnets(
    nics: Sequence[NicLike], subnets: Iterable, *, mgmt_mac: str, user_network: str | None
) -> str:
    """The seed's `network-config` for `nics` (planned NICs, or a version's NIC records) on
    `subnets` (the manifest's, or a version's subnet records: name, cidr, dhcp, dns,
    unmanaged, gateway). An instructor's own networkData is kept, with the management NIC
    added so the host can still reach the VM. Builds and clones render it alike."""
    if user_network:
        data = yaml.safe_load(user_network) or {}
        if isinstance(data, dict) and "network" in data and isinstance(data["network"], dict):
            data = data["network"]
        if isinstance(data, dict) and data.get("version") == 2:
            spell_out_default_routes(data)
            data.setdefault("ethernets", {})[MGMT_KEY] = _mgmt_entry(mgmt_mac)
        elif isinstance(data, dict) and data.get("version") == 1:
            data.setdefault("config", []).append(
                {
                    "type": "physical",
                    "name": MGMT_KEY,
                    "mac_address": mgmt_mac,
                    "subnets": [{"type": "dhcp"}],
                }
            )
        return yaml.safe_dump(data, sort_keys=False)
    by_name = {s.name: s for s in subnets}
    ethernets: dict = {}
    first_gateway: list = []
    for index, nic in enumerate(nics):
        ethernets[f"nic{index}"] = _nic_entry(nic, by_name[nic.subnet], first_gateway)
    ethernets[MGMT_KEY] = _mgmt_entry(mgmt_mac)
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def name_servers(network_config: str | None) -> list[str]:
    """The name servers `network_config` (v1 or v2 text, as rendered) gives the guest, in
    order, each once, at most MAX_NAME_SERVERS; what is not an IP address is left out."""
    data = yaml.safe_load(network_config or "") or {}
    if isinstance(data, dict) and isinstance(data.get("network"), dict):
        data = data["network"]
    if not isinstance(data, dict):
        return []
    found: list[object] = []
    if data.get("version") == 2:
        for kind in V2_DEVICE_KINDS:
            devices = data.get(kind)
            for entry in devices.values() if isinstance(devices, dict) else ():
                listed = entry.get("nameservers") if isinstance(entry, dict) else None
                if isinstance(listed, dict) and isinstance(listed.get("addresses"), list):
                    found += listed["addresses"]
    elif data.get("version") == 1:
        for item in data.get("config") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "nameserver" and isinstance(item.get("address"), list):
                found += item["address"]
            for subnet in item.get("subnets") or ():
                if isinstance(subnet, dict) and isinstance(subnet.get("dns_nameservers"), list):
                    found += subnet["dns_nameservers"]
    servers: list[str] = []
    for value in found:
        try:
            address = str(ipaddress.ip_address(str(value)))
        except ValueError:
            continue
        if address not in servers:
            servers.append(address)
    return servers[:MAX_NAME_SERVERS]
