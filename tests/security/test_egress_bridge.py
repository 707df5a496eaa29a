"""A guest's segment gives it no way to the host: the bridge libvirt makes has no address at
all (no IPv4, and no IPv6 link-local either, which would let a guest reach every host service
listening on ``::``), nor has the gateway's port on it or the router namespace any IPv6."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from ruddervirt.hypervisor import gateway
from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import NetworkSpec

pytestmark = pytest.mark.e2e


def addresses(*ip_args: str) -> list[dict]:
    out = subprocess.run(
        ["ip", "-j", *ip_args], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    return [a for link in json.loads(out) for a in link.get("addr_info", [])]


def ipv6_disabled(conf: str, netns: str | None = None) -> bool:
    if netns is None:
        return Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").read_text().strip() == "1"
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-n", f"net.ipv6.conf.{conf}.disable_ipv6"],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout  # fmt: skip
    return out.strip() == "1"


def test_a_guest_segment_has_no_host_address_of_any_family():
    from ruddervirt.runtime import get_hypervisor

    hv = get_hypervisor()
    name = f"{settings.RUDDERVIRT_NAME_PREFIX}sec{secrets.token_hex(3)}-lan"
    spec = NetworkSpec(
        name=name,
        bridge=bridge_name_for(name),
        ipv4="10.10.0.1/24",
        dhcp_range=("10.10.0.2", "10.10.0.254"),
        metadata={"kind": "test"},
    )
    hv.define_network(spec)
    try:
        hv.start_network(name)
        names = gateway.names_for(spec)
        assert addresses("addr", "show", "dev", spec.bridge) == []
        assert ipv6_disabled(spec.bridge) and ipv6_disabled(names.host_veth)
        assert addresses("addr", "show", "dev", names.host_veth) == []
        assert ipv6_disabled("all", names.netns) and ipv6_disabled(names.inner, names.netns)
        inner = addresses("-n", names.netns, "addr", "show", "dev", names.inner)
        assert [(a["family"], a["local"]) for a in inner] == [("inet", "10.10.0.1")]
    finally:
        hv.destroy_network(name)
        hv.undefine_network(name)
