"""Spec validation: bad values fail at construction with a message naming the field."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ruddervirt.hypervisor.specs import (
    DiskSpec,
    DomainSpec,
    EfiSpec,
    MgmtForward,
    NetworkSpec,
    NicSpec,
)

MIB = 1024 * 1024


def nic(n: int, slot: int | None = None) -> NicSpec:
    return NicSpec(mac=f"52:54:00:00:00:{n:02x}", network="rv-net", pci_slot=slot)


def domain(**overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": "rv-vm",
        "vcpus": 1,
        "memory_bytes": 256 * MIB,
        "domain_type": "qemu",
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_sequences_become_tuples_and_paths_become_paths() -> None:
    spec = domain(
        disks=[DiskSpec(path="/x/a.qcow2", target_bus="virtio")], nics=[nic(1)], serial_log="/l"
    )
    assert isinstance(spec.disks, tuple) and isinstance(spec.nics, tuple)
    assert spec.disks[0].path == Path("/x/a.qcow2")
    assert spec.serial_log == Path("/l")


def test_mac_is_normalised_to_lower_case() -> None:
    assert NicSpec(mac="52:54:00:AB:CD:EF", network="n").mac == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("mac", ["52:54:00:00:00", "zz:54:00:00:00:01", "01:00:5e:00:00:01"])
def test_bad_or_multicast_mac_is_rejected(mac: str) -> None:
    with pytest.raises(ValueError, match="mac"):
        NicSpec(mac=mac, network="n")


@pytest.mark.parametrize("slot", [0, 10, -1])
def test_nic_slot_outside_1_to_9_is_rejected(slot: int) -> None:
    with pytest.raises(ValueError, match="slot"):
        nic(1, slot)


def test_duplicate_nic_slots_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        domain(nics=[nic(1, 2), nic(2, 2)])


def test_duplicate_macs_are_rejected_including_the_management_nic() -> None:
    with pytest.raises(ValueError, match="MAC"):
        domain(nics=[nic(1)], mgmt=MgmtForward(host_port=2222, mac="52:54:00:00:00:01"))


def test_more_than_thirteen_nics_are_rejected() -> None:
    with pytest.raises(ValueError, match="NICs"):
        domain(nics=[nic(i) for i in range(14)])


def test_more_than_eight_virtio_disks_are_rejected() -> None:
    disks = [DiskSpec(path=f"/d/{i}.qcow2", target_bus="virtio") for i in range(9)]
    with pytest.raises(ValueError, match="virtio disks"):
        domain(disks=disks)


def test_cdrom_on_virtio_and_floppy_off_fdc_are_rejected() -> None:
    with pytest.raises(ValueError, match="cdrom"):
        DiskSpec(path="/x.iso", target_bus="virtio", device="cdrom")
    with pytest.raises(ValueError, match="fdc"):
        DiskSpec(path="/x.img", target_bus="sata", device="floppy")
    with pytest.raises(ValueError, match="fdc"):
        DiskSpec(path="/x.img", target_bus="fdc", device="disk")


def test_relative_disk_path_and_unknown_bus_are_rejected() -> None:
    with pytest.raises(ValueError, match="absolute"):
        DiskSpec(path="a.qcow2", target_bus="virtio")
    with pytest.raises(ValueError, match="bus"):
        DiskSpec(path="/a.qcow2", target_bus="ide")  # type: ignore[arg-type]


def test_secure_boot_needs_q35() -> None:
    efi = EfiSpec(loader="/fw/code.fd", nvram="/v/vars.fd", secure_boot=True)
    with pytest.raises(ValueError, match="q35"):
        domain(efi=efi)
    assert domain(efi=efi, machine="q35").is_q35


def test_domain_type_must_be_chosen_explicitly() -> None:
    with pytest.raises(ValueError, match="domain_type"):
        domain(domain_type="auto")


def test_metadata_values_must_be_strings_and_keys_identifiers() -> None:
    with pytest.raises(ValueError, match="string"):
        domain(metadata={"build": 12})
    with pytest.raises(ValueError, match="key"):
        domain(metadata={"has space": "x"})


def test_management_port_must_be_unprivileged() -> None:
    with pytest.raises(ValueError, match="host_port"):
        MgmtForward(host_port=22)


def test_title_must_be_one_line() -> None:
    with pytest.raises(ValueError, match="title"):
        domain(title="a\nb")


def net(**overrides: object) -> NetworkSpec:
    values: dict[str, object] = {"name": "rv-net", "bridge": "rvbr0"}
    values.update(overrides)
    return NetworkSpec(**values)  # type: ignore[arg-type]


def test_network_values_are_parsed_into_ip_types() -> None:
    spec = net(
        ipv4="10.1.0.1/24",
        dhcp_range=("10.1.0.100", "10.1.0.200"),
        dhcp_hosts=[("52:54:00:00:00:AA", "10.1.0.10", "web")],
        dns_hosts=[("10.1.0.11", ["db"])],
    )
    assert spec.ipv4 == ipaddress.IPv4Interface("10.1.0.1/24")
    assert spec.dhcp_range == (
        ipaddress.IPv4Address("10.1.0.100"),
        ipaddress.IPv4Address("10.1.0.200"),
    )
    assert spec.dhcp_hosts[0].mac == "52:54:00:00:00:aa"
    assert spec.dhcp_hosts[0].name == "web"
    assert spec.dns_hosts[0].names == ("db",)


def test_bridge_name_longer_than_15_is_rejected() -> None:
    with pytest.raises(ValueError, match="bridge"):
        net(bridge="a" * 16)


@pytest.mark.parametrize(
    "field, value",
    [
        ("dhcp_range", ("10.1.0.2", "10.1.0.9")),
        ("dns_hosts", [("10.1.0.2", ["x"])]),
        ("nat", True),
        ("domain", "lab"),
    ],
)
def test_unmanaged_network_refuses_dhcp_dns_and_nat(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        net(**{field: value})


def test_dhcp_range_must_lie_in_the_network_and_not_cover_the_host() -> None:
    with pytest.raises(ValueError, match="dhcp_range"):
        net(ipv4="10.1.0.1/24", dhcp_range=("10.2.0.2", "10.2.0.9"))
    with pytest.raises(ValueError, match="host IP"):
        net(ipv4="10.1.0.5/24", dhcp_range=("10.1.0.2", "10.1.0.9"))


def test_host_address_must_not_be_the_network_address() -> None:
    with pytest.raises(ValueError, match="host address"):
        net(ipv4="10.1.0.0/24")
