"""Kernel object names of a managed network's gateway, derived from its spec alone.

Shared by :mod:`ruddervirt.hypervisor.gateway` (the namespace, veth and dnsmasq) and
:mod:`ruddervirt.hypervisor.gateway_nat` (the uplink), which both name the same objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ruddervirt.hypervisor.specs import NetworkSpec


@dataclass(frozen=True)
class GatewayNames:
    """Kernel object names of one network's gateway (interface names fit in 15 characters)."""

    netns: str  # the router's namespace, shared by the subnets of one VPC
    host_veth: str  # host end of the subnet's veth, a port of the subnet's bridge
    inner: str  # the gateway's interface inside the namespace
    uplink_host: str  # host end of the router's NAT uplink
    uplink_inner: str = "uplink"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def router_of(spec: NetworkSpec) -> str:
    return spec.router or spec.name


def names_for(spec: NetworkSpec) -> GatewayNames:
    router = _digest(router_of(spec))
    subnet = _digest(spec.name)
    return GatewayNames(
        netns=f"rvr-{router}",
        host_veth=f"rvg{subnet}",
        inner=f"s{subnet}",
        uplink_host=f"rvu{router}",
    )
