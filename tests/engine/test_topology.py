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
    assert eth0["routes"] == [{"to": "default", "via": "10.10.0.1"}]
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
