"""A two-VM Debian 12 lab (issue 14, item 7b): a server and a client on one subnet with static
addresses. The build enables a systemd service on the server (a tiny HTTP server that serves
the machine-id of the VM it runs in); two clones are launched, and inside each one the service
runs and the client reaches *its own clone's* server, at its address and by the name `server`
(the subnet's DNS: the gateway's dnsmasq, docs/networking.md).

The page the client fetches must be the machine-id its clone's server shows over SSH: the two
clones have the same addresses, so only that proves which server answered. By name it works
as the guest is configured: Debian 12's ifupdown applies no name servers, so the seed writes
the gateway into /etc/resolv.conf (docs/examples.md "Names on Debian 12").

The build and the clones are made once (`lab`, module-scoped), which looks inside every clone
VM and records what it saw; the tests judge those records, so each costs no VM time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from textwrap import indent

import pytest
from django.core.management import call_command
from django.test import override_settings

from accounts.roles import STUDENTS
from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import services
from clones.models import Class, ClassMembership, Clone, CloneStatus
from clones.runner import run_inline
from ruddervirt.guest import ssh
from tests.debianimage.conftest import debian_image
from tests.e2e.storage import qemu_reachable_folder
from tests.e2e.test_debian_clones import guest
from tests.helpers import make_user

__all__ = ["debian_image"]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
    pytest.mark.timeout(2400),  # a two-VM Debian build and two two-VM clones under TCG
]

IMAGE = "debian12-lab.qcow2"
UNIT = """\
[Unit]
Description=The lab's hello page: this VM's machine-id over HTTP
After=network.target

[Service]
RuntimeDirectory=hello
ExecStartPre=/bin/sh -c 'cat /etc/machine-id > /run/hello/index.html'
ExecStart=/usr/bin/python3 -m http.server 8080 --directory /run/hello

[Install]
WantedBy=multi-user.target
"""
FETCH = (
    "import urllib.request as u; print(u.urlopen('http://{host}:8080/', timeout=5).read().decode())"
)


def fetch(host: str) -> str:
    """A shell command that prints the hello page of `host` (python3: the image has no curl)."""
    return f'python3 -c "{FETCH.format(host=host)}"'


# Retried: in a fresh clone the service and the gateway's DNS may come up after SSH does.
RETRY = "i=0; until {command}; do i=$((i+1)); [ $i -gt 60 ] && exit 1; sleep 2; done"


def manifest(image_server, private_key: str) -> str:
    vm = """\
  - name: {name}
    source:
      url: {url}
      checksum: sha256:{sha}
    resources: {{cpu: 1, memory: 768Mi}}
    disks: [{{name: root, size: 3Gi}}]
    communicator: {{sshUsername: debian, sshPrivateKeyFile: key, sshTimeout: 12m}}
    cloudInit: {{}}
    nics: [{{name: eth0, subnet: lan, slot: 1, ip: {ip}}}]
"""
    source = {"url": image_server.url(IMAGE), "sha": image_server.sha256(IMAGE)}
    return f"""\
timeout: 30m
files:
  - name: key
    inline: |
{indent(private_key.strip(), " " * 6)}
  - name: hello.service
    inline: |
{indent(UNIT, " " * 6)}
network:
  vpcs: [{{name: lab}}]
  subnets: [{{name: lan, vpc: lab, cidr: 10.20.0.0/24}}]
vms:
{vm.format(name="server", ip="10.20.0.10", **source)}\
    provisioners:
      - name: upload the unit
        type: file
        file: {{fileRef: hello.service, destination: /tmp/hello.service}}
      - name: enable the service
        type: shell
        shell:
          inline: |
            sudo install -m 644 /tmp/hello.service /etc/systemd/system/hello.service
            sudo systemctl daemon-reload
            sudo systemctl enable --now hello.service
            {RETRY.format(command=fetch("127.0.0.1"))}
{vm.format(name="client", ip="10.20.0.20", **source)}\
"""


def session_in(vm, private_key: str) -> ssh.SSHSession:
    """An SSH session as `debian` in clone VM `vm` (a context manager)."""
    target = ssh.SSHTarget(port=vm.mgmt_port, username="debian", private_key=private_key)
    return ssh.wait_for_ssh(target, timeout=600)


def booted(session: ssh.SSHSession) -> None:
    """Returns once the guest's cloud-init is done (fails the test when it failed)."""
    status = guest(session, "sudo -n timeout 300 cloud-init status --wait", timeout=320)
    assert "done" in status, status


LOOKUP = "i=0; until getent hosts server; do i=$((i+1)); [ $i -gt 15 ] && exit 1; sleep 2; done"


def look_inside(clone, private_key: str) -> dict[str, str]:
    """What one clone's VMs show: the server's service and machine-id; the client's page from
    the server's address, its name lookup as the guest is configured (exit status and
    output, retried for half a minute), its resolv.conf and its page by name."""
    seen: dict[str, str] = {}
    with session_in(clone.vms.get(name="server"), private_key) as session:
        booted(session)
        seen["service"] = guest(session, "systemctl is-enabled hello; systemctl is-active hello")
        seen["machine_id"] = guest(session, "cat /etc/machine-id")
    with session_in(clone.vms.get(name="client"), private_key) as session:
        booted(session)
        seen["page_by_address"] = guest(session, RETRY.format(command=fetch("10.20.0.10")), 200)
        done = session.run_capture(LOOKUP, timeout=120)
        seen["lookup_as_configured"] = f"{done.exit_status} {done.stdout.decode().strip()}"
        seen["resolv_conf"] = guest(session, "cat /etc/resolv.conf || true")
        seen["page_by_name"] = guest(session, RETRY.format(command=fetch("server")), 200)
    return seen


@pytest.fixture(scope="module")
def lab(django_db_setup, django_db_blocker, image_server, debian_image) -> Iterator[list[dict]]:
    """The two-VM build and a class of two clones, once per module: what each clone showed
    (look_inside), in clone order. The clones are deleted before the tests run."""
    if not (image_server.folder / IMAGE).exists():
        (image_server.folder / IMAGE).symlink_to(debian_image)
    private_key, _ = ssh.generate_keypair("instructor")
    root = qemu_reachable_folder("debian-lab")
    with django_db_blocker.unblock(), override_settings(RUDDERVIRT_STORAGE_ROOT=root):
        owner = make_user("lab-teacher", superuser=True)
        started = time.monotonic()
        text = manifest(image_server, private_key)
        build = execute_build(
            submit_manifest(text=text, module_name="deb-lab", user=owner, queue=False).pk
        )
        log = "\n".join(build.log_lines.order_by("seq").values_list("text", flat=True))
        assert build.status == BuildStatus.SUCCEEDED, f"{build.error}\n{log[-3000:]}"
        print(f"\ntwo-VM Debian build in {time.monotonic() - started:.1f}s")
        version = ModuleVersion.objects.get(build=build)
        klass = Class.objects.create(name="Debian lab", owner=owner)
        for name in ("cat", "dan"):
            ClassMembership.objects.create(klass=klass, student=make_user(name, STUDENTS))
        started = time.monotonic()
        made = services.launch(klass, version, by=owner, queue=False)
        run_inline([c.pk for c in made], "provision")
        clones = list(Clone.objects.order_by("pk"))
        try:
            assert len(clones) == 2
            assert {c.status for c in clones} == {CloneStatus.RUNNING}, [c.error for c in clones]
            seen = [look_inside(clone, private_key) for clone in clones]
            for one in seen:  # for the record: how the client looks names up as configured
                print(f"client: lookup {one['lookup_as_configured']!r}, {one['resolv_conf']!r}")
            print(f"2 two-VM Debian clones looked into in {time.monotonic() - started:.1f}s")
        finally:
            done, _ = services.request_for_class(klass, "delete", user=owner, queue=False)
            run_inline([c.pk for c in done], "delete")
        assert not Clone.objects.exists()
        call_command("flush", interactive=False, verbosity=0)
    yield seen
    shutil.rmtree(root, ignore_errors=True)


def test_in_every_debian_clone_the_service_runs_and_the_client_reaches_its_own_server(lab):
    for seen in lab:
        assert seen["service"].split() == ["enabled", "active"], seen
        assert seen["page_by_address"].splitlines()[-1] == seen["machine_id"], seen
    assert lab[0]["machine_id"] != lab[1]["machine_id"]  # each client reached its own server


def test_in_every_debian_clone_the_client_resolves_its_server_by_name_as_configured(lab):
    for seen in lab:
        assert "nameserver 10.20.0.1" in seen["resolv_conf"].splitlines(), seen
        assert seen["lookup_as_configured"].split()[:2] == ["0", "10.20.0.10"], seen
        assert seen["page_by_name"].splitlines()[-1] == seen["machine_id"], seen
