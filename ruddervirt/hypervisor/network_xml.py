"""Build libvirt network XML from a :class:`NetworkSpec` (ElementTree, never string templates).

Shapes produced:

* unmanaged (``ipv4`` None): ``<bridge>`` only, ``<dns enable='no'/>``; libvirt runs no dnsmasq,
  the host has no address on the segment, a guest router owns DHCP and the gateway.
* managed: the host address in ``<ip>``; ``<dhcp>`` only when a range or fixed hosts are given;
  DNS answers for ``dns_hosts`` and DHCP names. An isolated network without ``dns_forwarders``
  gets dnsmasq's ``no-resolv``: it never queries the host's upstream resolvers for the guests
  (a NAT network without forwarders uses the host's resolvers, as guests with internet need).
* no ``<forward>`` element at all (an isolated network) unless ``nat`` is True.

Owner metadata is written as ``<metadata><rv:owner>`` like for domains (libvirt 9.0 keeps it).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from ruddervirt.hypervisor.domain_xml import owner_metadata_element
from ruddervirt.hypervisor.specs import NetworkSpec

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
ET.register_namespace("dnsmasq", DNSMASQ_NS)

BRIDGE_PREFIX = "rvbr"


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
    _sub(network, "metadata").append(owner_metadata_element(spec.metadata))
    if spec.nat:
        _sub(network, "forward", mode="nat")
    _sub(network, "bridge", name=spec.bridge, stp="on", delay="0")
    if spec.ipv4 is None:
        _sub(network, "dns", enable="no")
        return network
    if spec.domain is not None:
        _sub(network, "domain", name=spec.domain, localOnly="yes")
    _add_dns(network, spec)
    _add_ip(network, spec)
    if not spec.dns_forwarders and not spec.nat:
        options = _sub(network, f"{{{DNSMASQ_NS}}}options")
        _sub(options, f"{{{DNSMASQ_NS}}}option", value="no-resolv")
    return network


def _add_dns(network: ET.Element, spec: NetworkSpec) -> None:
    dns = _sub(network, "dns")
    for forwarder in spec.dns_forwarders:
        _sub(dns, "forwarder", addr=str(forwarder))
    for host in spec.dns_hosts:
        host_el = _sub(dns, "host", ip=str(host.ip))
        for name in host.names:
            _sub(host_el, "hostname", name)


def _add_ip(network: ET.Element, spec: NetworkSpec) -> None:
    assert spec.ipv4 is not None
    ip = _sub(network, "ip", address=str(spec.ipv4.ip), prefix=str(spec.ipv4.network.prefixlen))
    if spec.dhcp_range is None and not spec.dhcp_hosts:
        return
    dhcp = _sub(ip, "dhcp")
    if spec.dhcp_range is not None:
        start, end = spec.dhcp_range
        _sub(dhcp, "range", start=str(start), end=str(end))
    for host in spec.dhcp_hosts:
        host_el = _sub(dhcp, "host", mac=host.mac, ip=str(host.ip))
        if host.name is not None:
            host_el.set("name", host.name)
