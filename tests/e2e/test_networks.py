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
from builds.runner import execute_build
from builds.services import submit_manifest
from ruddervirt.engine.clone import CloneRequest, create_clone, delete_clone
from ruddervirt.guest import ssh
from ruddervirt.hypervisor import gateway
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.network_xml import bridge_name_for
from ruddervirt.hypervisor.specs import NetworkSpec
from ruddervirt.runtime import engine_config
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


# --- one subnet, two VMs, then two clones of them --------------------------------------------

TALK = (
    WAIT_FOR
    + NIC_LIST
    + r"""
echo "RESOLV $ME $(grep nameserver /etc/resolv.conf | awk '{print $2}' | tr '\n' ' ')"
mkdir -p /www && echo "$ME" > /www/whoami && httpd -p 80 -h /www
wait_for 180 wget -q -O /dev/null "http://$PEER_IP/whoami"  # the peer is provisioning too
echo "LOOKUP $ME $PEER $(nslookup "$PEER" | awk '/^Address/ && !/#/ {print $NF}' | tail -n1)"
ping -c 2 -W 2 "$PEER"
ping -c 2 -W 2 "$PEER_IP"
echo "BY-NAME $ME $PEER $(wget -q -O - "http://$PEER/whoami")"
echo "BY-IP $ME $PEER_IP $(wget -q -O - "http://$PEER_IP/whoami")"
ping -c 1 -W 2 "$GATEWAY" && echo "GATEWAY $ME $GATEWAY"
for a in $NO_ROUTE; do unreachable "$a"; done
touch /www/done
wait_for 240 wget -q -O /dev/null "http://$PEER_IP/done"
sleep 3
"""
)

LEASES = (
    WAIT_FOR
    + r"""
iface_at() { for n in /sys/class/net/eth*; do
  case "$(readlink -f "$n/device")" in *"/$1/"*) echo "${n##*/}"; return;; esac; done; }
dyn=$(iface_at 0000:00:13.0); bare=$(iface_at 0000:00:12.0)
wait_for 120 sh -c "ip -4 addr show dev $dyn | grep -q inet"
sleep 10  # udhcpc has tried the unmanaged NIC several times by now
if ip -4 addr show dev "$bare" | grep -q inet; then echo "LEASE-ON-UNMANAGED $bare"; exit 1; fi
if grep -q "$bare bound" /var/log/udhcpc.log; then echo "LEASE-ON-UNMANAGED $bare"; exit 1; fi
echo "NO-LEASE $ME $bare $(grep -c "$bare" /var/log/udhcpc.log) udhcpc line(s)"
"""
    + NIC_LIST
)

PAIR = """\
timeout: 20m
files:
  - name: talk
    inline: |
@TALK@
  - name: leases
    inline: |
@LEASES@
network:
  vpcs: [{name: lab, internet: false}]
  subnets:
    - {name: lan, vpc: lab, cidr: 10.10.0.0/24, dns: [10.10.0.53]}
    - {name: lan2, vpc: lab, cidr: 10.11.0.0/24, dns: [10.11.0.53]}
    - {name: wire, vpc: lab, cidr: 10.30.0.0/29, unmanaged: true}
buildOverrides:
  vpcs: [{name: lab, internet: true}]
vms:
  - name: web
    source: @SOURCE@
    resources: {cpu: 1, memory: 256Mi}
    disks: [{name: root, size: 1Gi}]
    cloudInit: {}
    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}]
    provisioners:
      - name: talk
        type: shell
        shell:
          env:
            {ME: web, PEER: client, PEER_IP: 10.10.0.20, GATEWAY: 10.10.0.1, NO_ROUTE: "@NO_ROUTE@"}
          scriptFrom: {fileRef: talk}
  - name: client
    source: @SOURCE@
    resources: {cpu: 1, memory: 256Mi}
    disks: [{name: root, size: 1Gi}]
    cloudInit: {}
    nics:
      - {name: eth0, subnet: lan, slot: 1, ip: 10.10.0.20}
      - {name: eth1, subnet: lan2, slot: 3}
      - {name: eth2, subnet: wire, slot: 2}
    provisioners:
      - name: talk
        type: shell
        shell:
          env:
            {ME: client, PEER: web, PEER_IP: 10.10.0.10, GATEWAY: 10.10.0.1, NO_ROUTE: "@NO_ROUTE@"}
          scriptFrom: {fileRef: talk}
      - name: leases
        type: shell
        shell:
          env: {ME: client}
          scriptFrom: {fileRef: leases}
"""


def indented(script: str, spaces: int = 6) -> str:
    return "\n".join(
        " " * spaces + line if line else "" for line in script.strip("\n").splitlines()
    )


def pair_manifest(image_server) -> str:
    no_route = " ".join([*host_addresses(), OUTSIDE])
    return (
        PAIR.replace("@TALK@", indented(TALK))
        .replace("@LEASES@", indented(LEASES))
        .replace("@SOURCE@", image_source(image_server))
        .replace("@NO_ROUTE@", no_route)
    )


def test_two_vms_build_and_two_clones_run_side_by_side_with_the_same_addresses(
    image_server, hv, storage
):
    done = build(pair_manifest(image_server), "pair")
    lines = log_lines(done)
    assert done.status == BuildStatus.SUCCEEDED, done.error + "\n" + "\n".join(lines[-60:])
    print("\n".join(line for line in lines if re.match(r"[A-Z-]+ (web|client) ", line)))
    check_the_build_talked(lines)
    assert routers_of(f"b{done.pk}").isdisjoint(gateway.routers())  # the build cleaned up
    built = nic_table(lines)
    assert built == expected_nics(done), "the template records what the build's guests had"
    clones = [clone_of(done, storage) for _ in range(2)]
    sessions: list[dict[str, ssh.SSHSession]] = []
    try:
        for req, result in clones:
            sessions.append(login(result))
            check_the_clone_is_the_build(req.key, sessions[-1], built)
        check_the_clones_are_apart(clones, sessions, hv)
    finally:
        for opened in sessions:
            for session in opened.values():
                session.close()
        for req, _result in clones:
            delete_clone(req, hv=hv, config=engine_config())


def check_the_clone_is_the_build(key: str, vms: dict[str, ssh.SSHSession], built: dict) -> None:
    """Same NICs, slots, MACs and addresses as the build; its own web by name; dns handed out."""
    assert guest_nics(vms) == built, f"clone {key} has the build's NICs"
    guest(vms["web"], f"mkdir -p /www; echo {key} > /www/whoami; httpd -p 80 -h /www")
    resolv = guest(vms["client"], "cat /etc/resolv.conf")
    assert "nameserver 10.10.0.53" in resolv and "nameserver 10.11.0.53" in resolv  # option 6
    who = guest(vms["client"], "wget -q -O - http://web/whoami")
    print(f"CLONE {key}: client -> http://web/whoami = {who}")
    assert who == key  # by name, and its own web: not the other clone's


def check_the_clones_are_apart(clones, sessions, hv) -> None:
    """An address only clone 1 has is reachable in clone 1 only; deleting clone 2 removes its
    networks and router and leaves clone 1 running."""
    (req1, _), (req2, _) = clones
    one, two = sessions
    guest(one["web"], "ip addr add 10.10.0.99/24 dev eth0")
    print(f"CLONE {req1.key}: " + guest(one["client"], "ping -c 1 -W 2 10.10.0.99 | tail -n 2"))
    probe = "if ping -c 2 -W 2 10.10.0.99 >/tmp/p; then echo LEAK; fi; tail -n 2 /tmp/p"
    seen = guest(two["client"], probe)
    print(f"CLONE {req2.key}: {seen}")
    assert "LEAK" not in seen and "0 packets received" in seen
    assert routers_of(req2.key) <= set(gateway.routers())  # while it runs
    removed = delete_clone(req2, hv=hv, config=engine_config())
    print(f"CLONE {req2.key} deleted: " + ", ".join(removed))
    assert hv.list_networks(f"{engine_config().name_prefix}{req2.key}-") == []
    assert routers_of(req2.key).isdisjoint(gateway.routers())
    assert guest(one["client"], "wget -q -O - http://web/whoami") == req1.key


def check_the_build_talked(lines: list[str]) -> None:
    for me, peer, ip in (("web", "client", "10.10.0.20"), ("client", "web", "10.10.0.10")):
        assert f"BY-NAME {me} {peer} {peer}" in lines
        assert f"BY-IP {me} {ip} {peer}" in lines
        assert f"LOOKUP {me} {peer} {ip}" in lines
        for address in [*host_addresses(), OUTSIDE]:
            assert f"NO-ROUTE {me} -x-> {address}" in lines
    resolvers = {line.split()[1]: line.split()[2:] for line in tagged(lines, "RESOLV")}
    assert resolvers["web"][:2] == ["10.10.0.1", "10.10.0.53"]  # static: from network-config
    assert {"10.11.0.1", "10.11.0.53"} <= set(resolvers["client"])  # DHCP option 6 on lan2
    assert tagged(lines, "NO-LEASE client eth1")  # the unmanaged NIC (slot 2) got no lease
    assert any("VPC lab asks for internet" in line for line in lines)  # and got none


def expected_nics(done: Build) -> dict[tuple[str, str], tuple[str, str, str]]:
    """What the module version says the guests see: slot N at PCI 0x10+N, eth by slot order,
    the template's MACs and addresses (the dynamic one from the top of its subnet)."""
    cidrs = {"lan": 24, "lan2": 24}
    table = {}
    for tpl in ModuleVersion.objects.get(build=done).version_spec.vms:
        nics = sorted(tpl.nics, key=lambda n: n.slot)
        for index, nic in enumerate(nics):
            addr = f"{nic.ip}/{cidrs[nic.subnet]}" if nic.ip else "none"
            table[tpl.name, f"eth{index}"] = (nic.mac, f"0000:00:{0x10 + nic.slot:02x}.0", addr)
        domain = BuildVM.objects.get(build=done, name=tpl.name).domain_name
        assert tpl.mgmt.mac == mgmt_mac_for(domain)  # the build's management NIC, recorded
        table[tpl.name, f"eth{len(nics)}"] = (tpl.mgmt.mac, "0000:00:1e.0", "10.0.2.15/24")
    assert table["client", "eth2"][2] == "10.11.0.254/24"
    return table


def clone_of(done: Build, storage: Path):
    version = ModuleVersion.objects.get(build=done)
    req = CloneRequest(
        key=f"c{secrets.token_hex(3)}",
        spec=version.version_spec,
        workdir=storage / "clones" / secrets.token_hex(3),
    )
    return req, create_clone(req, hv=get_hv(), config=engine_config())


def get_hv():
    from ruddervirt.runtime import get_hypervisor

    return get_hypervisor()


def routers_of(key: str, vpcs: tuple[str, ...] = ("lab",)) -> set[str]:
    """The router namespaces the VPCs of build or clone `key` have while it runs."""
    prefix = engine_config().name_prefix
    return {
        gateway.names_for(
            NetworkSpec(name="x", bridge="x", ipv4="10.0.0.1/24", router=f"{prefix}{key}-vpc-{vpc}")
        ).netns
        for vpc in vpcs
    }


def login(result) -> dict[str, ssh.SSHSession]:
    """SSH sessions to a clone's VMs (root's password; the build's key left the template)."""
    sessions = {}
    for vm in result.vms:
        target = ssh.SSHTarget(port=vm.mgmt_port, username="root", password="rudder")
        sessions[vm.name] = ssh.wait_for_ssh(target, timeout=300)
    return sessions


def guest(session: ssh.SSHSession, command: str, timeout: float = 120) -> str:
    result = session.run_capture(command, timeout=timeout)
    out = result.stdout.decode(errors="replace").strip()
    assert result.exit_status == 0, f"{command}: {out} {result.stderr.decode(errors='replace')}"
    return out


def guest_nics(sessions: dict[str, ssh.SSHSession]) -> dict:
    """The clone's NICs as its guests see them, once DHCP gave every managed NIC its lease."""
    wait_dhcp = WAIT_FOR + "wait_for 180 sh -c 'ip -4 addr show | grep -q \"inet $WANT/\"'"
    guest(sessions["web"], f"export ME=web WANT=10.10.0.10; {wait_dhcp}", timeout=200)
    for want in ("10.10.0.20", "10.11.0.254"):
        guest(sessions["client"], f"export ME=client WANT={want}; {wait_dhcp}", timeout=200)
    lines = []
    for name, session in sessions.items():
        lines += guest(session, f"ME={name}; {NIC_LIST}").splitlines()
    return nic_table(lines)


# --- two VPCs: apart unless a guest routes between them --------------------------------------

HANDSHAKE = r"""
mkdir -p /www && echo "$ME" > /www/whoami && httpd -p 80 -h /www
finish() {  # a's checks are done: say bye to a, then let a see it before powering off
  wait_for 300 wget -q -O /dev/null "http://$A/done"
  touch /www/bye; sleep 5
}
"""

VPC_SCRIPTS = {
    # a (VPC a, lan): reaches a2 in the other subnet of its VPC, not b; then through r.
    "a": r"""
wait_for 180 wget -q -O /dev/null http://a2/whoami  # by name, once a2 provisions too
found=$(nslookup a2 | awk '/^Address/ && !/#/ {print $NF}' | tail -n1)
echo "SAME-VPC a -> a2 $(wget -q -O - http://a2/whoami) $found"
nslookup b >/dev/null 2>&1 && { echo "LEAK a resolves b"; exit 1; }
echo "NO-NAME a b"
unreachable 10.20.0.10
ip route add 10.20.0.0/24 via 10.10.0.30
wait_for 180 wget -q -O /dev/null http://10.20.0.10/whoami  # once r forwards, b routes back
echo "ROUTED a -> b via r: $(wget -q -O - http://10.20.0.10/whoami)"
touch /www/done
for peer in a2 10.10.0.30 10.20.0.10; do wait_for 300 wget -q -O /dev/null "http://$peer/bye"; done
""",
    # a2 (VPC a, lan2): reaches a by name through the VPC's router, never b.
    "a2": r"""
wait_for 180 ping -c 1 -W 1 a
unreachable 10.20.0.10
finish
""",
    # r (lan in VPC a + edge in VPC b): the guest router.
    "r": r"""
echo 1 > /proc/sys/net/ipv4/ip_forward
echo "FORWARDING r on"
finish
""",
    # b (VPC b, edge): cannot reach a until it routes through r.
    "b": r"""
unreachable 10.10.0.10
nslookup a >/dev/null 2>&1 && { echo "LEAK b resolves a"; exit 1; }
echo "NO-NAME b a"
echo "R-IN-VPC-B $(nslookup r | awk '/^Address/ && !/#/ {print $NF}' | tail -n1)"
ip route add 10.10.0.0/24 via 10.20.0.30
finish
""",
}

VPCS = """\
timeout: 20m
network:
  vpcs: [{name: a}, {name: b}]
  subnets:
    - {name: lan, vpc: a, cidr: 10.10.0.0/24}
    - {name: lan2, vpc: a, cidr: 10.11.0.0/24}
    - {name: edge, vpc: b, cidr: 10.20.0.0/24}
vms:
@VMS@"""

VPC_NICS = {
    "a": "[{name: eth0, subnet: lan, ip: 10.10.0.10}]",
    "a2": "[{name: eth0, subnet: lan2, ip: 10.11.0.10}]",
    "r": "[{name: eth0, subnet: lan, ip: 10.10.0.30}, {name: eth1, subnet: edge, ip: 10.20.0.30}]",
    "b": "[{name: eth0, subnet: edge, ip: 10.20.0.10}]",
}


def vpcs_manifest(image_server) -> str:
    vms = []
    for name, script in VPC_SCRIPTS.items():
        body = indented(WAIT_FOR + HANDSHAKE + script, 12)
        vms.append(
            f"""\
  - name: {name}
    source: {image_source(image_server)}
    resources: {{cpu: 1, memory: 256Mi}}
    disks: [{{name: root, size: 1Gi}}]
    cloudInit: {{}}
    nics: {VPC_NICS[name]}
    provisioners:
      - name: check
        type: shell
        shell:
          env: {{ME: {name}, A: 10.10.0.10}}
          inline: |
{body}
"""
        )
    return VPCS.replace("@VMS@", "".join(vms))


def test_vpcs_are_apart_unless_a_guest_routes_between_them(image_server):
    done = build(vpcs_manifest(image_server), "vpcs")
    lines = log_lines(done)
    assert done.status == BuildStatus.SUCCEEDED, done.error + "\n" + "\n".join(lines[-80:])
    print("\n".join(line for line in lines if re.match(r"[A-Z-]+ (a|a2|b|r) ", line)))
    assert "SAME-VPC a -> a2 a2 10.11.0.10" in lines  # another subnet, same VPC: routed
    assert "NO-ROUTE a -x-> 10.20.0.10" in lines  # the other VPC: no way
    assert "NO-ROUTE a2 -x-> 10.20.0.10" in lines
    assert "NO-ROUTE b -x-> 10.10.0.10" in lines
    assert "NO-NAME a b" in lines and "NO-NAME b a" in lines  # DNS is per VPC
    assert "R-IN-VPC-B 10.20.0.30" in lines  # r's address in b's VPC
    assert "ROUTED a -> b via r: b" in lines  # the guest router joins them
    assert routers_of(f"b{done.pk}", ("a", "b")).isdisjoint(gateway.routers())
