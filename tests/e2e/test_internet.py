"""The internet path end to end, without the internet: a VPC with internet while building only
(``buildOverrides``) reaches a stand-in "outside" web server through its router's NAT uplink;
the clones of the same module cannot.

The uplink's far end is a namespace this test makes (tests/e2e/outside.py), named by
RUDDERVIRT_UPLINK_NETNS; neither it nor the "outside" behind it has a default route or a link
to the machine, and the test checks that the machine's own network stack never got an uplink
or a rule for the build's router: the host's real default route is never part of the path.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from ruddervirt.engine.clone import delete_clone
from ruddervirt.hypervisor import gateway, gateway_nat
from ruddervirt.hypervisor.gateway_names import GatewayNames
from ruddervirt.hypervisor.specs import NetworkSpec
from ruddervirt.runtime import engine_config
from tests.e2e.outside import WAN, Outside, stand_in_outside
from tests.e2e.test_networks import clone_of, guest, image_source, log_lines, login
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

# busybox 1.35's `wget -T` crashes (segfault): `timeout` bounds each try instead.
FETCH = r"""
i=0
until page=$(timeout 20 wget -q -O - "$URL"); do
  i=$((i + 1)); [ "$i" -lt 12 ] || { echo "GAVE-UP fetching $URL"; exit 1; }
  sleep 5
done
echo "FETCHED $page"
"""

MANIFEST = """\
timeout: 15m
network:
  vpcs: [{name: lab, internet: false}]
  subnets: [{name: lan, vpc: lab, cidr: 10.10.0.0/24}]
buildOverrides:
  vpcs: [{name: lab, internet: true}]
vms:
  - name: web
    source: @SOURCE@
    resources: {cpu: 1, memory: 256Mi}
    disks: [{name: root, size: 1Gi}]
    cloudInit: {}
    nics: [{name: eth0, subnet: lan, ip: 10.10.0.10}]
    provisioners:
      - name: fetch
        type: shell
        shell:
          env: {URL: "@URL@"}
          inline: |
@FETCH@
"""


def manifest(image_server, url: str) -> str:
    fetch = "\n".join(" " * 12 + line for line in FETCH.strip("\n").splitlines())
    return (
        MANIFEST.replace("@SOURCE@", image_source(image_server))
        .replace("@URL@", url)
        .replace("@FETCH@", fetch)
    )


@pytest.fixture
def outside(monkeypatch, settings, tmp_path) -> Iterator[Outside]:
    """The stand-in outside, with this host allowing internet only because every uplink now
    ends in it."""
    with stand_in_outside(f"{settings.RUDDERVIRT_NAME_PREFIX}inet", tmp_path) as world:
        monkeypatch.setenv(gateway_nat.UPLINK_NETNS_ENV, world.up)
        settings.RUDDERVIRT_ALLOW_INTERNET = True
        yield world


def router_names(key: str) -> GatewayNames:
    """The kernel names of the router of VPC ``lab`` of build or clone ``key``."""
    router = f"{engine_config().name_prefix}{key}-vpc-lab"
    return gateway.names_for(NetworkSpec(name="x", bridge="x", ipv4="10.0.0.1/24", router=router))


@dataclass
class UplinkSightings:
    """Whether the router's uplink was ever seen on the machine itself, or in the stand-in."""

    on_host: bool = False
    in_stand_in: bool = False


def _in_stand_in(outside: Outside, link: str) -> bool:
    done = subprocess.run(
        ["ip", "-n", outside.up, "link", "show", "dev", link], capture_output=True, timeout=10
    )
    return done.returncode == 0


@contextlib.contextmanager
def watching_the_uplink(names: GatewayNames, outside: Outside) -> Iterator[UplinkSightings]:
    """Look for the router's uplink veth, on the host and in the stand-in, while the block runs."""
    seen, stop = UplinkSightings(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.on_host |= Path("/sys/class/net", names.uplink_host).exists()
            seen.in_stand_in |= _in_stand_in(outside, names.uplink_host)
            stop.wait(0.25)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=15)


def host_rules() -> str:
    """The machine's own iptables rules (nat and filter), read only."""
    return "".join(
        subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        for table in ("nat", "filter")
    )


def check_sealed(outside: Outside) -> None:
    """The stand-in leads nowhere: no default route, OUT knows only its own subnet."""
    assert not any(outside.default_routes().values()), outside.default_routes()
    assert [r.split()[0] for r in outside.out_routes()] == ["198.51.100.0/24"]
    assert outside.links(outside.out) == ["lo", "eth0"]
    assert outside.links(outside.up) == ["lo", "wan"]


def test_the_build_reaches_the_outside_through_its_uplink_and_its_clone_cannot(
    image_server, hv, storage, outside: Outside
):
    check_sealed(outside)
    path = f"/build-{secrets.token_hex(4)}"
    user = make_user(f"inst-{time.monotonic_ns()}", superuser=True)
    text = manifest(image_server, outside.url(path))
    submitted = submit_manifest(text=text, module_name="inet", user=user, queue=False)
    names = router_names(f"b{submitted.pk}")
    with watching_the_uplink(names, outside) as seen:
        done = execute_build(submitted.pk)
    lines = log_lines(done)
    assert done.status == BuildStatus.SUCCEEDED, done.error + "\n" + "\n".join(lines[-40:])
    print("\n".join(line for line in lines if line.strip().startswith(("FETCHED", "GAVE-UP"))))
    assert f"FETCHED outside says hello {path}" in [line.strip() for line in lines]
    assert not any("asks for internet" in line for line in lines)  # it was given
    assert seen.in_stand_in and not seen.on_host, seen
    assert gateway_nat.comment(names) not in host_rules()
    assert outside.requests() == [{"path": path, "client": WAN}]  # masqueraded by the stand-in
    vpc = ModuleVersion.objects.get(build=done).version_spec.topology.vpcs[0]
    assert (vpc.name, vpc.internet, vpc.internet_while_building) == ("lab", False, True)
    check_the_clone_cannot_reach(done, storage, hv, outside)
    assert outside.requests() == [{"path": path, "client": WAN}]  # nothing from the clone
    check_sealed(outside)  # and the build's uplink went with its router


def check_the_clone_cannot_reach(done, storage: Path, hv, outside: Outside) -> None:
    """A clone, made while this host allows internet, has a default route to its gateway and
    still gets nowhere: its router has no uplink."""
    req, result = clone_of(done, storage)
    sessions = {}
    try:
        sessions = login(result)
        web = sessions["web"]
        guest(web, "i=0; until ip -4 addr show | grep -q 'inet 10.10.0.10/'; do "
                   "i=$((i + 1)); [ $i -lt 240 ] || exit 1; sleep 0.5; done")  # fmt: skip
        assert guest(web, "ip route show default").startswith("default via 10.10.0.1")
        url = outside.url(f"/clone-{req.key}")
        probe = f"timeout 20 wget -q -O - {url} >/tmp/w 2>&1; echo EXIT $?; cat /tmp/w"
        seen = guest(web, probe, timeout=60)
        print(f"CLONE {req.key}: wget {url}: {seen}")
        assert not seen.startswith("EXIT 0") and "outside says hello" not in seen
        # Refused on the way (no route, or silence), not an answer from anywhere:
        assert "can't connect" in seen or seen.startswith("EXIT 143"), seen
        clone_router = router_names(req.key).netns
        assert clone_router in gateway.routers()  # it runs, with no way out:
        routes = subprocess.run(
            ["ip", "-n", clone_router, "-4", "route", "show", "default"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert routes == ""
        assert not _in_stand_in(outside, router_names(req.key).uplink_host)
    finally:
        for session in sessions.values():
            session.close()
        delete_clone(req, hv=hv, config=engine_config())
