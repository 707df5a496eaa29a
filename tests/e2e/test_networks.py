"""Module networks for real: gateways in their own namespaces, VMs talking by name and static
IP on isolated segments, VPCs apart, and clones with the build's addresses side by side.

Only guests talk to guests here; the host reaches them through the loopback SSH forward of
their management NIC. The guests' own scripts check reachability and print what they saw
into the build log, which the tests then read.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from builds.models import Build, BuildLogLine, BuildStatus, BuildVM, ModuleVersion
from builds.services import engine_config, execute_build, submit_manifest
from ruddervirt.engine.clone import CloneRequest, TemplateVM, create_clone, delete_clone
from ruddervirt.guest import ssh
from ruddervirt.hypervisor import gateway
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import NetworkSpec
from ruddervirt.manifest import parse
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

OUTSIDE = "203.0.113.1"  # TEST-NET-3: stands for "the internet"; never reachable from here

# Busybox sh in the tiny guest. Every line the tests look for starts with an upper-case tag.
NIC_LIST = r"""
for n in /sys/class/net/eth*; do
  pci=$(basename "$(dirname "$(readlink -f "$n/device")")")
  addr=$(ip -4 -o addr show dev "${n##*/}" | awk '{print $4}' | head -n1)
  echo "NIC $ME ${n##*/} $(cat "$n/address") $pci ${addr:-none}"
done
"""

WAIT_FOR = r"""
wait_for() {  # wait_for SECONDS COMMAND...: retry until it succeeds
  _t=$1; shift; _i=0
  until "$@" >/dev/null 2>&1; do
    _i=$((_i + 1)); [ "$_i" -lt "$((_t * 2))" ] || { echo "GAVE-UP $ME on: $*"; return 1; }
    sleep 0.5
  done
}
unreachable() {  # unreachable ADDRESS: ping must fail
  if ping -c 1 -W 2 "$1" >/dev/null 2>&1; then echo "LEAK $ME reached $1"; return 1; fi
  echo "NO-ROUTE $ME -x-> $1"
}
"""


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses (not loopback): guests must not reach any of them."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line]
    return [a for a in found if not ipaddress.IPv4Address(a).is_loopback]


def image_source(image_server) -> str:
    name = "tiny-20250101.qcow2"
    return f"{{url: {image_server.url(name)}, checksum: 'sha256:{image_server.sha256(name)}'}}"


def build(text: str, name: str) -> Build:
    user = make_user(f"inst-{time.monotonic_ns()}", superuser=True)
    submitted = submit_manifest(text=text, module_name=name, user=user, queue=False)
    return execute_build(submitted.pk)


def log_lines(done: Build) -> list[str]:
    return list(
        BuildLogLine.objects.filter(build=done).order_by("seq").values_list("text", flat=True)
    )


def tagged(lines: list[str], tag: str) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith(tag + " ")]


def nic_table(lines: list[str]) -> dict[tuple[str, str], tuple[str, str, str]]:
    """From `NIC vm iface mac pci addr` lines: (vm, iface) -> (mac, pci, addr)."""
    table = {}
    for line in tagged(lines, "NIC"):
        _tag, vm, iface, mac, pci, addr = line.split()
        table[vm, iface] = (mac, pci, addr)
    return table


# --- the gateway layer alone (no guests) ---------------------------------------------------


def managed(name: str, cidr: str = "10.10.0.0/24", **extra) -> NetworkSpec:
    net = ipaddress.IPv4Network(cidr)
    hosts = list(net.hosts())
    return NetworkSpec(
        name=name,
        bridge=bridge_name_for(name),
        ipv4=f"{hosts[0]}/{net.prefixlen}",
        dhcp_range=(hosts[1], hosts[-1]),
        metadata={"kind": "test"},
        **extra,
    )


def test_two_networks_with_the_same_cidr_run_side_by_side_and_leave_nothing(hv):
    prefix = engine_config().name_prefix
    specs = [managed(f"{prefix}t{secrets.token_hex(3)}-lan") for _ in range(2)]
    try:
        for spec in specs:
            hv.define_network(spec)
            hv.start_network(spec.name)
        assert all(gateway.running(spec) for spec in specs)
        namespaces = {gateway.names_for(spec).netns for spec in specs}
        assert namespaces <= set(gateway.routers())
        # The host itself has no address in the guests' subnet: the gateways are elsewhere.
        assert not any(a.startswith("10.10.0.") for a in host_addresses())
        hv.start_network(specs[0].name)  # idempotent, and repairs a dead gateway:
        pid = int((gateway.RUNTIME_DIR / gateway.names_for(specs[0]).netns / specs[0].name
                   / "dnsmasq.pid").read_text())  # fmt: skip
        subprocess.run(["kill", str(pid)], timeout=10, check=True)
        wait(lambda: not gateway.running(specs[0]), 10, "the killed gateway to look dead")
        hv.start_network(specs[0].name)
        assert gateway.running(specs[0])
    finally:
        for spec in specs:
            hv.destroy_network(spec.name)
            hv.undefine_network(spec.name)
    assert namespaces.isdisjoint(gateway.routers())
    assert not any(Path("/sys/class/net", gateway.names_for(s).host_veth).exists() for s in specs)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")
