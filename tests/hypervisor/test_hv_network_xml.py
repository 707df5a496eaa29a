"""Network XML, checked by parsing it back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ruddervirt.hypervisor.domain_xml import parse_owner_metadata
from ruddervirt.hypervisor.network_xml import DNSMASQ_NS, bridge_name_for, build_network_xml
from ruddervirt.hypervisor.specs import NetworkSpec


def network(**overrides: object) -> NetworkSpec:
    values: dict[str, object] = {"name": "rv-b1-lan", "bridge": "rvbr1"}
    values.update(overrides)
    return NetworkSpec(**values)  # type: ignore[arg-type]


def parse(spec: NetworkSpec) -> ET.Element:
    return ET.fromstring(build_network_xml(spec))


def dnsmasq_options(root: ET.Element) -> list[str]:
    path = f"./{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option"
    return [option.get("value", "") for option in root.findall(path)]


def test_managed_network_with_dhcp_has_host_ip_range_and_fixed_hosts() -> None:
    root = parse(
        network(
            ipv4="10.10.0.1/24",
            dhcp_range=("10.10.0.100", "10.10.0.200"),
            dhcp_hosts=[("52:54:00:00:00:0a", "10.10.0.10", "web")],
        )
    )
    ip = root.find("ip")
    assert ip is not None
    assert (ip.get("address"), ip.get("prefix")) == ("10.10.0.1", "24")
    dhcp_range = ip.find("./dhcp/range")
    assert dhcp_range is not None
    assert (dhcp_range.get("start"), dhcp_range.get("end")) == ("10.10.0.100", "10.10.0.200")
    hosts = [(h.get("mac"), h.get("ip"), h.get("name")) for h in ip.findall("./dhcp/host")]
    assert hosts == [("52:54:00:00:00:0a", "10.10.0.10", "web")]


def test_managed_network_without_dhcp_has_ip_but_no_dhcp_element() -> None:
    root = parse(network(ipv4="10.10.0.1/24"))
    assert root.find("ip") is not None
    assert root.find("./ip/dhcp") is None


def test_fixed_hosts_alone_still_get_a_dhcp_element() -> None:
    root = parse(network(ipv4="10.10.0.1/24", dhcp_hosts=[("52:54:00:00:00:0a", "10.10.0.10")]))
    assert root.find("./ip/dhcp/range") is None
    host = root.find("./ip/dhcp/host")
    assert host is not None
    assert host.get("name") is None


def test_unmanaged_network_is_a_bare_bridge_without_ip_dhcp_or_dns() -> None:
    root = parse(network())
    assert root.find("ip") is None
    assert root.find("dns").get("enable") == "no"  # type: ignore[union-attr]
    assert dnsmasq_options(root) == []
    bridge = root.find("bridge")
    assert bridge is not None
    assert bridge.get("name") == "rvbr1"


def test_no_forward_element_unless_nat() -> None:
    for spec in (
        network(),
        network(ipv4="10.10.0.1/24"),
        network(ipv4="10.10.0.1/24", dhcp_range=("10.10.0.2", "10.10.0.9")),
    ):
        assert parse(spec).find("forward") is None
    nat = parse(network(ipv4="10.10.0.1/24", nat=True))
    assert nat.find("forward").get("mode") == "nat"  # type: ignore[union-attr]


def test_isolated_network_never_queries_upstream_dns() -> None:
    assert dnsmasq_options(parse(network(ipv4="10.10.0.1/24"))) == ["no-resolv"]


def test_dns_forwarders_and_nat_networks_use_upstream_resolvers() -> None:
    root = parse(network(ipv4="10.10.0.1/24", dns_forwarders=["10.10.0.53"]))
    assert [f.get("addr") for f in root.findall("./dns/forwarder")] == ["10.10.0.53"]
    assert dnsmasq_options(root) == []
    assert dnsmasq_options(parse(network(ipv4="10.10.0.1/24", nat=True))) == []


def test_dns_hosts_and_domain() -> None:
    root = parse(
        network(ipv4="10.10.0.1/24", dns_hosts=[("10.10.0.11", ["db", "db.lab"])], domain="lab")
    )
    host = root.find("./dns/host")
    assert host is not None
    assert host.get("ip") == "10.10.0.11"
    assert [name.text for name in host.findall("hostname")] == ["db", "db.lab"]
    domain = root.find("domain")
    assert domain is not None
    assert (domain.get("name"), domain.get("localOnly")) == ("lab", "yes")


def test_network_owner_metadata_round_trips() -> None:
    tags = {"kind": "clone", "clone_id": "9"}
    assert parse_owner_metadata(build_network_xml(network(metadata=tags))) == tags


def test_bridge_names_fit_the_kernel_limit_and_are_stable() -> None:
    name = bridge_name_for("rv-build-123456-a-very-long-subnet-name")
    assert len(name) <= 15
    assert name == bridge_name_for("rv-build-123456-a-very-long-subnet-name")
    assert name != bridge_name_for("rv-build-123456-another-subnet")
    assert network(bridge=name).bridge == name
