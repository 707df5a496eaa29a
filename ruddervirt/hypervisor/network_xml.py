"""Libvirt network XML for a :class:`NetworkSpec`, and the spec back from that XML.

libvirt only ever sees a bare, isolated bridge: no ``<ip>``, no ``<forward>``, no dnsmasq of
its own (``<dns enable='no'/>``), so the host has no address on any guest segment. That is
what lets two clones use the same CIDR side by side: libvirt refuses to start a second network
whose ``<ip>`` subnet is already routed on the host.

A managed network's gateway (address, DHCP, DNS, NAT) lives in a network namespace run by
:mod:`ruddervirt.hypervisor.gateway`. Its whole description is kept in the network's
``<metadata>`` as ``<rvgw:gateway>`` so the definition stays self-contained: whoever starts the
network later (a clone after a host reboot) finds everything there. The owner tags sit beside
it as ``<rv:owner>`` like for domains (libvirt 9.0 keeps both).

ElementTree only, never string templates; :func:`parse_network_xml` reads only XML produced by
us or libvirtd (no DOCTYPE, so no entity expansion to fear).
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from typing import Any

from ruddervirt.hypervisor.domain_xml import owner_metadata_element, parse_owner_metadata
from ruddervirt.hypervisor.specs import DhcpHost, DnsHost, NetworkSpec

GATEWAY_NS = "https://ruddervirt.example/xmlns/gateway/1"
ET.register_namespace("rvgw", GATEWAY_NS)

BRIDGE_PREFIX = "rvbr"


def _q(tag: str) -> str:
    return f"{{{GATEWAY_NS}}}{tag}"


def bridge_name_for(network_name: str, prefix: str = BRIDGE_PREFIX) -> str:
    """A stable bridge name (<= 15 characters, the kernel's limit) derived from the network name."""
    digest = hashlib.sha256(network_name.encode()).hexdigest()
    return (prefix + digest)[:15]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def build_network_xml(spec: NetworkSpec, *, uuid: str | None = None) -> str:
    """The libvirt network XML for ``spec``; ``uuid`` keeps an existing network's identity."""
    return ET.tostring(build_network_element(spec, uuid=uuid), encoding="unicode")


def build_network_element(spec: NetworkSpec, *, uuid: str | None = None) -> ET.Element:
    """The ``<network>`` element for ``spec`` (see :func:`build_network_xml`)."""
    network = ET.Element("network")
    _sub(network, "name", spec.name)
    if uuid is not None:
        _sub(network, "uuid", uuid)
    metadata = _sub(network, "metadata")
    metadata.append(owner_metadata_element(spec.metadata))
    if spec.ipv4 is not None:
        metadata.append(gateway_element(spec))
    _sub(network, "bridge", name=spec.bridge, stp="on", delay="0")
    _sub(network, "dns", enable="no")
    return network


def gateway_element(spec: NetworkSpec) -> ET.Element:
    """``<rvgw:gateway>``: everything of a managed spec beyond its name, bridge and owner."""
    assert spec.ipv4 is not None
    gateway = ET.Element(
        _q("gateway"),
        address=str(spec.ipv4.ip),
        prefix=str(spec.ipv4.network.prefixlen),
        nat="yes" if spec.nat else "no",
    )
    if spec.router is not None:
        gateway.set("router", spec.router)
    if spec.domain is not None:
        gateway.set("domain", spec.domain)
    if spec.dhcp_range is not None or spec.dhcp_hosts:
        dhcp = _sub(gateway, _q("dhcp"))
        if spec.dhcp_range is not None:
            dhcp.set("start", str(spec.dhcp_range[0]))
            dhcp.set("end", str(spec.dhcp_range[1]))
        for host in spec.dhcp_hosts:
            host_el = _sub(dhcp, _q("host"), mac=host.mac, ip=str(host.ip))
            if host.name is not None:
                host_el.set("name", host.name)
    dns = _sub(gateway, _q("dns"))
    for dns_host in spec.dns_hosts:
        host_el = _sub(dns, _q("host"), ip=str(dns_host.ip))
        for name in dns_host.names:
            _sub(host_el, _q("hostname"), name)
    for server in spec.dns_servers:
        _sub(dns, _q("server"), addr=str(server))
    for forwarder in spec.dns_forwarders:
        _sub(dns, _q("forwarder"), addr=str(forwarder))
    return gateway


def parse_network_xml(xml: str | ET.Element) -> NetworkSpec:
    """The spec a network was defined from (name, bridge, owner tags and gateway).

    Raises ValueError when the XML is not a bridge network of ours."""
    root = ET.fromstring(xml) if isinstance(xml, str) else xml  # noqa: S314
    name = root.findtext("name")
    bridge = root.find("bridge")
    if not name or bridge is None or not bridge.get("name"):
        raise ValueError("not a bridge network: it has no name or no bridge")
    common: dict[str, Any] = {
        "name": name,
        "bridge": bridge.get("name", ""),
        "metadata": parse_owner_metadata(root),
    }
    gateway = root.find(f"./metadata/{_q('gateway')}")
    if gateway is None:
        return NetworkSpec(**common)
    return NetworkSpec(**common, **_gateway_fields(gateway))


def _gateway_fields(gateway: ET.Element) -> dict[str, Any]:
    dhcp = gateway.find(_q("dhcp"))
    dhcp_range = None
    hosts: list[DhcpHost] = []
    if dhcp is not None:
        if dhcp.get("start") and dhcp.get("end"):
            dhcp_range = (
                ipaddress.IPv4Address(dhcp.get("start", "")),
                ipaddress.IPv4Address(dhcp.get("end", "")),
            )
        hosts = [
            DhcpHost(h.get("mac", ""), ipaddress.IPv4Address(h.get("ip", "")), h.get("name"))
            for h in dhcp.findall(_q("host"))
        ]
    dns = gateway.find(_q("dns"))
    dns = dns if dns is not None else ET.Element(_q("dns"))
    return {
        "ipv4": ipaddress.IPv4Interface(f"{gateway.get('address')}/{gateway.get('prefix')}"),
        "dhcp_range": dhcp_range,
        "dhcp_hosts": tuple(hosts),
        "dns_hosts": tuple(
            DnsHost(
                ipaddress.IPv4Address(h.get("ip", "")),
                tuple(n.text or "" for n in h.findall(_q("hostname"))),
            )
            for h in dns.findall(_q("host"))
        ),
        "dns_servers": tuple(s.get("addr", "") for s in dns.findall(_q("server"))),
        "dns_forwarders": tuple(f.get("addr", "") for f in dns.findall(_q("forwarder"))),
        "nat": gateway.get("nat") == "yes",
        "domain": gateway.get("domain"),
        "router": gateway.get("router"),
    }
