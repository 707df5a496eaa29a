"""Planning networks and NICs from a manifest (no hypervisor needed)."""

from __future__ import annotations

import ipaddress

import yaml

from ruddervirt.engine import netconfig
from ruddervirt.engine.topology import plan
from ruddervirt.manifest import parse

TWO_VPCS = """\
network:
  vpcs: [{name: lab, internet: false}, {name: dmz, internet: true}]
  subnets:
    - {name: lan, vpc: lab, cidr: 10.10.0.0/24}
    - {name: edge, vpc: dmz, cidr: 10.20.0.0/29}
    - {name: wire, vpc: lab, cidr: 10.30.0.0/29, unmanaged: true}
vms:
  - name: web
    source: {url: "file:///x.qcow2"}
    cloudInit: {}
    nics:
      - {name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}
      - {name: eth1, subnet: edge, slot: 3}
  - name: client
    source: {url: "file:///x.qcow2"}
    nics:
      - {name: eth0, subnet: lan, slot: 1, mac: "52:54:00:aa:bb:cc"}
      - {name: eth1, subnet: wire, slot: 2}
"""


def macs():
    counter = iter(range(1, 100))
    return lambda: f"52:54:00:00:00:{next(counter):02x}"


def topology(**kwargs):
    return plan(parse(TWO_VPCS), owner="b7", prefix="rvt-", new_mac=macs(), **kwargs)


def test_every_subnet_becomes_a_network_named_for_its_owner():
    topo = topology(allow_internet=False)
    assert [n.name for n in topo.networks] == ["rvt-b7-lan", "rvt-b7-edge", "rvt-b7-wire"]
    other = plan(parse(TWO_VPCS), owner="c9", prefix="rvt-", allow_internet=False)
    assert {n.bridge for n in topo.networks}.isdisjoint({n.bridge for n in other.networks})


def test_managed_subnet_gets_gateway_dhcp_and_fixed_leases():
    lan = topology(allow_internet=False).networks[0]
    assert lan.ipv4 == ipaddress.IPv4Interface("10.10.0.1/24")
    leases = {h.mac: (str(h.ip), h.name) for h in lan.dhcp_hosts}
    assert leases["52:54:00:aa:bb:cc"][1] == "client"
    assert ("10.10.0.10", "web") in leases.values()
    assert not lan.nat


def test_nics_without_ip_get_a_stable_address_from_the_top_of_the_subnet():
    nics = topology(allow_internet=False).nics
    assert nics["client"][0].ip == "10.10.0.254"
    assert nics["web"][1].ip == "10.20.0.6"  # /29: .1 gateway, .6 last host


def test_unmanaged_subnet_is_a_bare_bridge():
    wire = topology(allow_internet=False).networks[2]
    assert wire.ipv4 is None and not wire.dhcp_hosts and not wire.dns_hosts
    assert topology(allow_internet=False).nics["client"][1].ip is None


def test_dns_resolves_every_vm_of_the_vpc_by_name():
    lan = topology(allow_internet=False).networks[0]
    names = {n for host in lan.dns_hosts for n in host.names}
    assert names == {"web", "client"}


def test_internet_is_nat_only_where_the_host_allows_it():
    assert topology(allow_internet=True).networks[1].nat is True
    closed = topology(allow_internet=False)
    assert closed.networks[1].nat is False
    assert any("dmz" in w for w in closed.warnings)


def test_pinned_macs_and_ips_are_kept_for_clones():
    built = topology(allow_internet=False)
    pinned_macs = {(p.vm, p.name): p.mac for plans in built.nics.values() for p in plans}
    pinned_ips = {(p.vm, p.name): p.ip for plans in built.nics.values() for p in plans}
    clone = plan(
        parse(TWO_VPCS),
        owner="c1",
        prefix="rvt-",
        allow_internet=False,
        macs=pinned_macs,
        ips=pinned_ips,
    )
    assert {(p.vm, p.name): (p.mac, p.ip, p.slot) for ps in clone.nics.values() for p in ps} == {
        (p.vm, p.name): (p.mac, p.ip, p.slot) for ps in built.nics.values() for p in ps
    }


def test_network_config_sets_static_ips_and_keeps_mgmt_off_the_default_route():
    manifest = parse(TWO_VPCS)
    topo = plan(manifest, owner="b7", prefix="rvt-", allow_internet=False, new_mac=macs())
    text = netconfig.render(
        topo.nics["web"], manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None
    )
    data = yaml.safe_load(text)
    assert data["version"] == 2
    eth0 = data["ethernets"]["nic0"]
    assert eth0["addresses"] == ["10.10.0.10/24"]
    # cloud-init 22.4 (Debian 12) rejects `to: default` and then brings no NIC up.
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": "10.10.0.1"}]
    assert "default" not in text
    assert data["ethernets"]["nic1"]["dhcp4"] is True
    mgmt = data["ethernets"]["rvmgmt"]
    assert mgmt["match"] == {"macaddress": "52:54:00:fe:00:01"}
    assert mgmt["dhcp4-overrides"] == {"use-routes": False, "use-dns": False}


def test_instructor_network_data_is_kept_with_the_mgmt_nic_added():
    manifest = parse(TWO_VPCS)
    own = "version: 2\nethernets:\n  ens3: {dhcp4: true}\n"
    data = yaml.safe_load(
        netconfig.render((), manifest, mgmt_mac="52:54:00:fe:00:01", user_network=own)
    )
    assert data["ethernets"]["ens3"] == {"dhcp4": True}
    assert "rvmgmt" in data["ethernets"]


def test_instructor_default_routes_are_rewritten_for_debian_12_cloud_init():
    manifest = parse(TWO_VPCS)
    own = """\
network:
  version: 2
  ethernets:
    ens3:
      addresses: [10.10.0.9/24, "fd00::9/64"]
      routes:
        - {to: default, via: 10.10.0.1}
        - {to: default, via: "fd00::1"}
        - {to: 10.9.0.0/16, via: 10.10.0.2}
  bridges:
    br0: {routes: [{to: default, via: 10.20.0.1, metric: 50}]}
"""
    data = yaml.safe_load(
        netconfig.render((), manifest, mgmt_mac="52:54:00:fe:00:01", user_network=own)
    )
    assert data["ethernets"]["ens3"]["routes"] == [
        {"to": "0.0.0.0/0", "via": "10.10.0.1"},
        {"to": "::/0", "via": "fd00::1"},
        {"to": "10.9.0.0/16", "via": "10.10.0.2"},
    ]
    assert data["bridges"]["br0"]["routes"] == [
        {"to": "0.0.0.0/0", "via": "10.20.0.1", "metric": 50}
    ]


def test_the_name_servers_of_a_rendered_config_are_read_back_for_the_guests_resolv_conf():
    manifest = parse(TWO_VPCS)
    topo = plan(manifest, owner="b7", prefix="rvt-", allow_internet=False, new_mac=macs())
    text = netconfig.render(
        topo.nics["web"], manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None
    )
    # The static NIC's gateway; the DHCP NIC and the management NIC name none.
    assert netconfig.name_servers(text) == ["10.10.0.1"]
    assert (
        netconfig.name_servers(
            netconfig.render((), manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None)
        )
        == []
    )


def test_an_instructors_name_servers_are_read_back_in_order_once_and_at_most_three():
    v2 = """\
version: 2
ethernets:
  ens3: {addresses: [10.1.0.5/24], nameservers: {addresses: [10.1.0.1, "fd00::1", bogus]}}
  ens4: {dhcp4: true, nameservers: {addresses: [10.1.0.1, 9.9.9.9, 1.1.1.1]}}
"""
    assert netconfig.name_servers(v2) == ["10.1.0.1", "fd00::1", "9.9.9.9"]
    v1 = """\
network:
  version: 1
  config:
    - {type: physical, name: ens3, subnets: [{type: static, address: 10.2.0.5/24,
       dns_nameservers: [10.2.0.1]}]}
    - {type: nameserver, address: [10.2.0.53]}
"""
    assert netconfig.name_servers(v1) == ["10.2.0.1", "10.2.0.53"]
    assert netconfig.name_servers(None) == [] and netconfig.name_servers("- a list") == []


def test_the_subnets_of_one_vpc_share_a_router_and_other_vpcs_do_not():
    lan, edge, wire = topology(allow_internet=False).networks
    assert lan.router == "rvt-b7-vpc-lab" and edge.router == "rvt-b7-vpc-dmz"
    assert wire.router is None  # unmanaged: no gateway at all
    clone = plan(parse(TWO_VPCS), owner="c1", prefix="rvt-", allow_internet=False)
    assert clone.networks[0].router == "rvt-c1-vpc-lab"


def test_networks_carry_owner_tags_and_their_subnet():
    topo = plan(
        parse(TWO_VPCS), owner="b7", prefix="rvt-", allow_internet=False, metadata={"kind": "build"}
    )
    assert topo.networks[1].metadata == {"kind": "build", "subnet": "edge"}


DEFAULT = """\
vms:
  - name: web
    source: {url: "file:///x.qcow2"}
  - name: db
    source: {url: "file:///x.qcow2"}
"""


def test_without_a_network_section_the_default_topology_applies():
    topo = plan(parse(DEFAULT), owner="b3", prefix="rvt-", allow_internet=True, new_mac=macs())
    [net] = topo.networks
    assert net.name == "rvt-b3-default"
    assert net.ipv4 == ipaddress.IPv4Interface("10.77.0.1/24")
    assert net.nat  # the default VPC has internet, and this host allows it
    assert [topo.nics[vm][0].ip for vm in ("web", "db")] == ["10.77.0.254", "10.77.0.253"]
    assert [topo.nics[vm][0].slot for vm in ("web", "db")] == [1, 1]
    assert not plan(parse(DEFAULT), owner="b3", prefix="rvt-", allow_internet=False).networks[0].nat


DNS = """\
network:
  vpcs: [{name: lab}]
  subnets:
    - {name: lan, cidr: 10.10.0.0/24, dns: [10.10.0.53, 9.9.9.9]}
    - {name: lan2, cidr: 10.11.0.0/24}
    - {name: quiet, cidr: 10.12.0.0/24, dhcp: false}
    - {name: wire, cidr: 10.30.0.0/29, unmanaged: true, dns: [10.30.0.2]}
vms:
  - name: router
    source: {url: "file:///x.qcow2"}
    cloudInit: {}
    nics:
      - {name: eth0, subnet: lan, ip: 10.10.0.2}
      - {name: eth1, subnet: lan2, ip: 10.11.0.2}
      - {name: eth2, subnet: wire, ip: 10.30.0.2}
  - name: quietvm
    source: {url: "file:///x.qcow2"}
    cloudInit: {}
    nics:
      - {name: eth0, subnet: quiet}
      - {name: eth1, subnet: wire}
  - name: far
    source: {url: "file:///x.qcow2"}
    nics: [{name: eth0, subnet: wire, ip: 10.30.0.5}]
"""


def dns_names(spec) -> dict[str, str]:
    return {name: str(host.ip) for host in spec.dns_hosts for name in host.names}


def test_dns_servers_are_handed_out_after_the_gateway():
    lan = plan(parse(DNS), owner="b1", prefix="rvt-", allow_internet=False).networks[0]
    assert [str(a) for a in lan.dns_servers] == ["10.10.0.53", "9.9.9.9"]


def test_each_subnet_resolves_a_vm_to_its_own_address_there_when_it_has_one():
    lan, lan2, quiet, _wire = plan(
        parse(DNS), owner="b1", prefix="rvt-", allow_internet=False
    ).networks
    assert dns_names(lan) == {"router": "10.10.0.2"}
    assert dns_names(lan2) == {"router": "10.11.0.2"}
    # quiet has no DHCP: quietvm has no address the gateway knows; far is only on a guest
    # router's segment, which the VPC's router cannot reach.
    assert dns_names(quiet) == {"router": "10.10.0.2"}


def test_a_subnet_without_dhcp_leaves_dynamic_nics_without_an_address():
    manifest = parse(DNS)
    topo = plan(manifest, owner="b1", prefix="rvt-", allow_internet=False)
    quiet = topo.networks[2]
    assert quiet.ipv4 is not None and quiet.dhcp_range is None and not quiet.dhcp_hosts
    assert topo.nics["quietvm"][0].ip is None
    config = yaml.safe_load(
        netconfig.render(
            topo.nics["quietvm"], manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None
        )
    )
    assert config["ethernets"]["nic0"]["dhcp4"] is False  # nobody would answer
    assert config["ethernets"]["nic1"] == {
        "match": {"macaddress": topo.nics["quietvm"][1].mac},
        "dhcp4": True,
        "optional": True,  # a guest router may serve DHCP on the bare segment
    }


def test_static_addresses_on_a_bare_segment_get_its_dns_but_no_route():
    manifest = parse(DNS)
    topo = plan(manifest, owner="b1", prefix="rvt-", allow_internet=False)
    config = yaml.safe_load(
        netconfig.render(
            topo.nics["far"], manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None
        )
    )
    assert config["ethernets"]["nic0"]["addresses"] == ["10.30.0.5/29"]
    assert config["ethernets"]["nic0"]["nameservers"] == {"addresses": ["10.30.0.2"]}
    assert "routes" not in config["ethernets"]["nic0"]
    router = yaml.safe_load(
        netconfig.render(
            topo.nics["router"], manifest, mgmt_mac="52:54:00:fe:00:01", user_network=None
        )
    )["ethernets"]
    assert router["nic0"]["nameservers"] == {"addresses": ["10.10.0.1", "10.10.0.53", "9.9.9.9"]}
    assert "routes" in router["nic0"] and "routes" not in router["nic1"]  # one default route


def test_pinned_addresses_that_no_longer_fit_their_subnet_are_dropped():
    topo = plan(
        parse(DNS),
        owner="c1",
        prefix="rvt-",
        allow_internet=False,
        ips={("quietvm", "eth0"): "10.12.0.9", ("quietvm", "eth1"): "10.30.0.3"},
    )
    assert [n.ip for n in topo.nics["quietvm"]] == [None, None]  # no DHCP / unmanaged
    moved = plan(parse(TWO_VPCS), owner="c1", prefix="rvt-", allow_internet=False,
                 ips={("client", "eth0"): "192.168.5.5"})  # fmt: skip
    assert moved.nics["client"][0].ip == "10.10.0.254"


def test_generated_macs_never_repeat_one_already_in_the_module():
    repeating = iter(
        ["52:54:00:aa:bb:cc", "52:54:00:00:00:01", "52:54:00:00:00:01", "52:54:00:00:00:02",
         "52:54:00:00:00:03"]
    )  # fmt: skip
    topo = plan(parse(TWO_VPCS), owner="b1", prefix="rvt-", allow_internet=False,
                new_mac=lambda: next(repeating))  # fmt: skip
    all_macs = [p.mac for plans in topo.nics.values() for p in plans]
    assert len(set(all_macs)) == len(all_macs) == 4
    assert "52:54:00:aa:bb:cc" in all_macs  # client's own, declared


OVERRIDDEN = """\
network:
  vpcs: [{name: lab, internet: false}]
  subnets:
    - {name: lan, cidr: 10.10.0.0/24}
    - {name: wire, cidr: 10.30.0.0/29, unmanaged: true}
buildOverrides:
  vpcs: [{name: lab, internet: true}]
  subnets: [{name: wire, unmanaged: false}]
  vms:
    - name: web
      resources: {cpu: 4, memory: 4Gi}
      nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}, {name: up, subnet: wire, slot: 4}]
vms:
  - name: web
    source: {url: "file:///x.qcow2"}
    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}, {name: eth1, subnet: wire, slot: 2}]
"""


def test_build_overrides_shape_the_build_only_and_clones_get_the_base():
    base = parse(OVERRIDDEN)
    built = plan(base.for_build(), owner="b1", prefix="rvt-", allow_internet=True, new_mac=macs())
    lan, wire = built.networks
    assert lan.nat and wire.ipv4 is not None  # internet and a managed wire while building
    assert [(n.name, n.slot) for n in built.nics["web"]] == [("eth0", 1), ("up", 4)]
    from ruddervirt.engine.capture import base_nics

    recorded = base_nics(base, built.nics)["web"]
    assert [(n.name, n.slot, n.subnet) for n in recorded] == [
        ("eth0", 1, "lan"),
        ("eth1", 2, "wire"),
    ]
    assert recorded[0].mac == built.nics["web"][0].mac  # the same NIC keeps its MAC
    clone = plan(base, owner="c1", prefix="rvt-", allow_internet=True,
                 macs={("web", n.name): n.mac for n in recorded},
                 ips={("web", n.name): n.ip for n in recorded if n.ip})  # fmt: skip
    lan, wire = clone.networks
    assert not lan.nat and wire.ipv4 is None  # the base: no internet, a bare wire
    assert [(n.name, n.mac, n.ip) for n in clone.nics["web"]] == [
        (n.name, n.mac, n.ip) for n in recorded
    ]
