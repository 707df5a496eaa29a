"""The gateway's names, dnsmasq configuration and NAT rules (no namespaces are made here;
tests/e2e/test_networks.py runs them for real)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ruddervirt.hypervisor import gateway, gateway_egress, gateway_nat
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
    policy = gateway_egress.EgressPolicy.for_host([], [])
    host = gateway_nat.host_rules(names, link, policy)
    tag = gateway_nat.comment(names)
    assert all(tag in rule for rule in host)  # removable by comment
    assert ["-t", "nat", "-A", "POSTROUTING", "-s", "100.64.0.4/30", "!", "-d", "100.64.0.0/10",
            "-m", "comment", "--comment", tag, "-j", "MASQUERADE"] in host  # fmt: skip
    forward = [r[5:] for r in host if r[3] == "FORWARD"]
    assert [r[4] for r in host if r[3] == "FORWARD"] == [str(i) for i in range(1, len(forward) + 1)]
    # Top to bottom: replies in, nothing else in, ..., no other uplink, then out.
    assert "RELATED,ESTABLISHED" in forward[0] and forward[0][-1] == "ACCEPT"
    assert forward[1][:2] == ["-o", names.uplink_host] and forward[1][-1] == "DROP"
    assert forward[-2][forward[-2].index("-o") + 1] == "rvu+" and forward[-2][-1] == "DROP"
    assert forward[-1] == [
        "-i",
        names.uplink_host,
        "-m",
        "comment",
        "--comment",
        tag,
        "-j",
        "ACCEPT",
    ]
    assert any(r[3] == "INPUT" and r[-1] == "DROP" for r in host)  # not the host itself
    inside = gateway_nat.netns_rules(names, policy)
    assert ["-t", "filter", "-A", "FORWARD", "-i", "uplink", "-j", "DROP"] in inside
    assert ["-t", "nat", "-A", "POSTROUTING", "-o", "uplink", "-j", "MASQUERADE"] in inside


def test_egress_drops_private_link_local_cgnat_and_the_hosts_subnets_before_accepting() -> None:
    host_nets = [ipaddress.IPv4Network("203.0.113.0/24"), ipaddress.IPv4Network("10.1.0.0/16")]
    policy = gateway_egress.EgressPolicy.for_host(host_nets, [])
    blocked = {str(n) for n in policy.blocked}
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                "100.64.0.0/10", "224.0.0.0/4", "240.0.0.0/4", "203.0.113.0/24"):  # fmt: skip
        assert net in blocked
    assert "10.1.0.0/16" not in blocked  # inside 10/8 already
    names = gateway.names_for(spec(nat=True))
    forward = gateway_egress.host_forward_rules(names.uplink_host, policy, [])
    accept_all = forward.index(["-i", names.uplink_host, "-j", "ACCEPT"])
    drops = [r for r in forward if "-d" in r and r[-1] == "DROP"]
    assert {r[r.index("-d") + 1] for r in drops} == blocked
    assert all(forward.index(r) < accept_all for r in drops)
    inside = gateway_egress.netns_filter_rules("uplink", policy)
    assert {r[4] for r in inside if r[:3] == ["FORWARD", "-o", "uplink"]} == blocked


def test_only_the_hosts_private_resolvers_get_port_53_and_only_for_the_gateway_itself() -> None:
    resolvers = [ipaddress.IPv4Address(a) for a in ("192.168.1.1", "9.9.9.9", "127.0.0.53")]
    policy = gateway_egress.EgressPolicy.for_host([], resolvers)
    assert policy.resolvers == (ipaddress.IPv4Address("192.168.1.1"),)
    inside = gateway_egress.netns_filter_rules("uplink", policy)
    opened = [r for r in inside if r[-1] == "ACCEPT" and "-d" in r]
    assert {r[0] for r in opened} == {"OUTPUT"}  # never FORWARD: guests stay dropped
    assert {(r[r.index("-p") + 1], r[r.index("--dport") + 1]) for r in opened} == {
        ("udp", "53"),
        ("tcp", "53"),
    }
    first_drop = next(i for i, r in enumerate(inside) if r[0] == "OUTPUT" and r[-1] == "DROP")
    assert all(inside.index(r) < first_drop for r in opened)


def test_host_addresses_and_resolvers_are_read_from_ip_and_resolv_conf() -> None:
    listing = (
        "1: lo    inet 127.0.0.1/8 scope host lo\n"
        "2: eth0    inet 198.51.100.7/24 brd 198.51.100.255 scope global eth0\n"
    )
    assert gateway_egress.host_networks(listing) == [
        ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("198.51.100.0/24"),
    ]  # fmt: skip
    text = "# x\nnameserver 10.0.0.2\nnameserver fd00::1\nsearch lan\n"
    assert gateway_egress.resolvers(text) == [ipaddress.IPv4Address("10.0.0.2")]
