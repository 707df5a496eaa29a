"""Network XML, checked by parsing it back."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from ruddervirt.hypervisor.domain_xml import parse_owner_metadata
from ruddervirt.hypervisor.network_xml import (
    GATEWAY_NS,
    bridge_name_for,
    build_network_xml,
    parse_network_xml,
)
from ruddervirt.hypervisor.specs import NetworkSpec


def network(**overrides: object) -> NetworkSpec:
    values: dict[str, object] = {"name": "rv-b1-lan", "bridge": "rvbr1"}
    values.update(overrides)
    return NetworkSpec(**values)  # type: ignore[arg-type]


def parse(spec: NetworkSpec) -> ET.Element:
    return ET.fromstring(build_network_xml(spec))


def gw(root: ET.Element, path: str = "") -> ET.Element | None:
    """The element at `path` below <rvgw:gateway> (the gateway itself for '')."""
    steps = "/".join(f"{{{GATEWAY_NS}}}{step}" for step in path.split("/") if step)
    return root.find(f"./metadata/{{{GATEWAY_NS}}}gateway" + (f"/{steps}" if steps else ""))


FULL = {
    "ipv4": "10.10.0.1/24",
    "dhcp_range": ("10.10.0.2", "10.10.0.254"),
    "dhcp_hosts": [
        ("52:54:00:00:00:0a", "10.10.0.10", "web"),
        ("52:54:00:00:00:0b", "10.10.0.254"),
    ],
    "dns_hosts": [("10.10.0.10", ["web", "www"])],
    "dns_servers": ["10.10.0.53", "10.10.0.54"],
    "router": "rv-b1-vpc-lab",
    "metadata": {"kind": "build", "build": "b1"},
}


def test_libvirt_only_ever_sees_a_bare_isolated_bridge() -> None:
    """No <ip>, <forward> or libvirt dnsmasq, whatever the spec asks for: the host gets no
    address on the segment, so same-CIDR networks of two clones can both start."""
    for spec in (network(), network(**FULL), network(**{**FULL, "nat": True})):
        root = parse(spec)
        assert root.find("ip") is None
        assert root.find("forward") is None
        assert root.find("dns").get("enable") == "no"  # type: ignore[union-attr]
        bridge = root.find("bridge")
        assert bridge is not None and bridge.get("name") == "rvbr1"


def test_unmanaged_network_has_no_gateway() -> None:
    assert gw(parse(network())) is None


def test_managed_network_keeps_its_gateway_in_the_metadata() -> None:
    root = parse(network(**FULL))
    gateway = gw(root)
    assert gateway is not None
    assert (gateway.get("address"), gateway.get("prefix")) == ("10.10.0.1", "24")
    assert (gateway.get("nat"), gateway.get("router")) == ("no", "rv-b1-vpc-lab")
    dhcp = gw(root, "dhcp")
    assert dhcp is not None and (dhcp.get("start"), dhcp.get("end")) == ("10.10.0.2", "10.10.0.254")
    hosts = [(h.get("mac"), h.get("ip"), h.get("name")) for h in dhcp]
    assert hosts == [
        ("52:54:00:00:00:0a", "10.10.0.10", "web"),
        ("52:54:00:00:00:0b", "10.10.0.254", None),
    ]
    servers = [s.get("addr") for s in gw(root, "dns").findall(f"{{{GATEWAY_NS}}}server")]  # type: ignore[union-attr]
    assert servers == ["10.10.0.53", "10.10.0.54"]


def test_a_managed_network_without_dhcp_has_no_dhcp_element() -> None:
    assert gw(parse(network(ipv4="10.10.0.1/24")), "dhcp") is None


@pytest.mark.parametrize(
    "spec",
    [
        network(),
        network(**FULL),
        network(ipv4="10.10.0.1/24", nat=True, domain="lab"),
        network(ipv4="10.10.0.1/29", dhcp_hosts=[("52:54:00:00:00:0a", "10.10.0.6")]),
        network(ipv4="10.10.0.1/24", dns_forwarders=["10.10.0.53"]),
    ],
)
def test_the_spec_reads_back_from_the_xml_unchanged(spec: NetworkSpec) -> None:
    assert parse_network_xml(build_network_xml(spec)) == spec


def test_reading_back_libvirts_own_dump_with_uuid_and_mac() -> None:
    root = parse(network(**FULL))
    ET.SubElement(root, "mac", address="52:54:00:aa:bb:cc")
    spec = parse_network_xml(ET.tostring(root, encoding="unicode"))
    assert spec.ipv4 == ipaddress.IPv4Interface("10.10.0.1/24")
    assert spec.metadata == {"kind": "build", "build": "b1"}


def test_xml_without_a_bridge_is_not_ours() -> None:
    with pytest.raises(ValueError, match="bridge"):
        parse_network_xml("<network><name>default</name></network>")


def test_network_owner_metadata_round_trips() -> None:
    tags = {"kind": "clone", "clone_id": "9"}
    assert parse_owner_metadata(build_network_xml(network(metadata=tags))) == tags


def test_bridge_names_fit_the_kernel_limit_and_are_stable() -> None:
    name = bridge_name_for("rv-build-123456-a-very-long-subnet-name")
    assert len(name) <= 15
    assert name == bridge_name_for("rv-build-123456-a-very-long-subnet-name")
    assert name != bridge_name_for("rv-build-123456-another-subnet")
    assert network(bridge=name).bridge == name
