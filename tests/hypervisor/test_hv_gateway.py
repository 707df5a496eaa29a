"""The gateway's names, dnsmasq configuration and NAT rules (no namespaces are made here;
tests/e2e/test_networks.py runs them for real)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ruddervirt.hypervisor import gateway, gateway_nat
from ruddervirt.hypervisor.specs import NetworkSpec

FOLDER = Path("/run/ruddervirt/gateways/rvr-x/rv-b1-lan")


def spec(**overrides: object) -> NetworkSpec:
    values: dict[str, object] = {
        "name": "rv-b1-lan",
        "bridge": "rvbr1",
        "ipv4": "10.10.0.1/24",
        "dhcp_range": ("10.10.0.2", "10.10.0.254"),
        "dhcp_hosts": [
            ("52:54:00:00:00:0a", "10.10.0.10", "web"),
            ("52:54:00:00:00:0b", "10.10.0.254"),
        ],
        "dns_hosts": [("10.10.0.10", ["web"]), ("10.10.0.254", ["client", "db"])],
        "router": "rv-b1-vpc-lab",
    }
    values.update(overrides)
    return NetworkSpec(**values)  # type: ignore[arg-type]


def config(**overrides: object) -> list[str]:
    net = spec(**overrides)
    return gateway.dnsmasq_config(net, gateway.names_for(net), FOLDER).splitlines()


def test_names_fit_the_kernel_and_subnets_of_one_router_share_its_namespace() -> None:
    lan, lan2 = spec(), spec(name="rv-b1-lan2")
    names, names2 = gateway.names_for(lan), gateway.names_for(lan2)
    assert names.netns == names2.netns  # one VPC, one router
    assert names.host_veth != names2.host_veth and names.inner != names2.inner
    for name in (names.host_veth, names.inner, names.uplink_host, names.uplink_inner):
        assert len(name) <= 15
    assert gateway.names_for(spec(router=None)).netns != names.netns  # a router of its own
    assert gateway.names_for(spec(router="rv-c1-vpc-lab")).netns != names.netns  # a clone's


def test_dnsmasq_serves_only_its_interface_with_fixed_leases_and_the_vms_names() -> None:
    lines = config()
    names = gateway.names_for(spec())
    assert f"interface={names.inner}" in lines and "bind-interfaces" in lines
    assert "dhcp-range=10.10.0.2,10.10.0.254,255.255.255.0,1h" in lines
    assert f"dhcp-hostsfile={FOLDER / 'dhcp-hosts'}" in lines
    assert f"addn-hosts={FOLDER / 'hosts'}" in lines and "no-hosts" in lines
    assert "dhcp-option=option:router,10.10.0.1" in lines
    assert gateway.dhcp_hosts_text(spec()) == (
        "52:54:00:00:00:0a,10.10.0.10,web\n52:54:00:00:00:0b,10.10.0.254\n"
    )
    assert gateway.hosts_text(spec()) == "10.10.0.10 web\n10.10.0.254 client db\n"


def test_dhcp_hands_out_the_gateway_then_the_subnets_dns_servers() -> None:
    assert "dhcp-option=option:dns-server,10.10.0.1" in config()
    lines = config(dns_servers=["10.10.0.53", "9.9.9.9"])
    assert "dhcp-option=option:dns-server,10.10.0.1,10.10.0.53,9.9.9.9" in lines


def test_an_isolated_gateway_never_asks_upstream_resolvers() -> None:
    lines = config()
    assert "no-resolv" in lines and not any(line.startswith("server=") for line in lines)
    forwarding = config(dns_forwarders=["10.10.0.53"])
    assert "server=10.10.0.53" in forwarding and "no-resolv" in forwarding
    assert "no-resolv" not in config(nat=True)  # with internet: the host's resolvers


def test_fixed_leases_alone_and_no_dhcp_at_all() -> None:
    fixed = config(dhcp_range=None)
    assert "dhcp-range=10.10.0.0,static,255.255.255.0,1h" in fixed
    quiet = config(dhcp_range=None, dhcp_hosts=())
    assert not any(line.startswith("dhcp-") for line in quiet)
    assert f"addn-hosts={FOLDER / 'hosts'}" in quiet  # DNS still answers


def test_a_domain_makes_names_local_to_it() -> None:
    lines = config(domain="lab")
    assert {"domain=lab", "local=/lab/", "expand-hosts"} <= set(lines)


def test_uplink_addresses_are_stable_and_skip_taken_ones() -> None:
    first = gateway_nat.uplink_link("rvr-abc", set())
    assert first.prefixlen == 30 and first.subnet_of(gateway_nat.UPLINK_POOL)
    assert gateway_nat.uplink_link("rvr-abc", set()) == first
    other = gateway_nat.uplink_link("rvr-abc", {first})
    assert other != first and not other.overlaps(first)


def test_nat_rules_let_replies_in_but_nothing_else_and_keep_vpcs_apart() -> None:
    names = gateway.names_for(spec(nat=True))
    link = ipaddress.IPv4Network("100.64.0.4/30")
    host = gateway_nat.host_rules(names, link)
    tag = gateway_nat.comment(names)
    assert all(tag in rule for rule in host)  # removable by comment
    assert ["-t", "nat", "-A", "POSTROUTING", "-s", "100.64.0.4/30", "!", "-d", "100.64.0.0/10",
            "-m", "comment", "--comment", tag, "-j", "MASQUERADE"] in host  # fmt: skip
    forward = [r for r in host if "FORWARD" in r]
    # Inserted at the top one after the other: the last one listed ends up first.
    assert forward[-1][-2:] == ["-j", "ACCEPT"] and "RELATED,ESTABLISHED" in forward[-1]
    assert forward[-2][forward[-2].index("-o") + 1] == "rvu+" and forward[-2][-1] == "DROP"
    assert any(r[3] == "INPUT" and r[-1] == "DROP" for r in host)  # not the host itself
    inside = gateway_nat.netns_rules(names)
    assert ["-t", "filter", "-A", "FORWARD", "-i", "uplink", "-j", "DROP"] in inside
    assert ["-t", "nat", "-A", "POSTROUTING", "-o", "uplink", "-j", "MASQUERADE"] in inside
