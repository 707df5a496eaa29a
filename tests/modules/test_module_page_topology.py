"""The topology picture on the module page: for the module's owner only."""

from __future__ import annotations

import pytest

from builds.models import Build, ModuleVersion, TemplateVM
from modules.services import create_module, save_manifest
from ruddervirt.spec import dump_spec
from tests.helpers import client_for
from tests.specs import version_of, vm_record

pytestmark = pytest.mark.django_db

PAIR = """\
network:
  vpcs: [{name: lab}]
  subnets: [{name: lan, cidr: 10.10.0.0/24}]
vms:
  - name: web
    source: {url: "http://127.0.0.1:9/x.qcow2"}
    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}]
  - name: client
    source: {url: "http://127.0.0.1:9/x.qcow2"}
    nics: [{name: eth0, subnet: lan, slot: 1}]
"""


def built_version(module, revision) -> ModuleVersion:
    build = Build.objects.create(
        module=module,
        revision=revision,
        manifest_text=revision.text,
        manifest_sha256=revision.sha256,
        requested_by=module.owner,
    )
    records = [
        vm_record(
            name, disks=[("root", f"modules/pair/v1/{name}/root.qcow2", 1 << 30)],
            nics=[{"name": "eth0", "subnet": "lan", "slot": 1, "mac": mac, "ip": ip}],
        )
        for name, mac, ip in [
            ("web", "52:54:00:00:00:01", "10.10.0.10"),
            ("client", "52:54:00:00:00:02", "10.10.0.254"),
        ]
    ]  # fmt: skip
    version = ModuleVersion.objects.create(
        module=module,
        number=1,
        build=build,
        manifest_text=revision.text,
        manifest_sha256=revision.sha256,
        storage_path="/nonexistent",
        spec=dump_spec(version_of(revision.text, records)),
    )
    for index, name in enumerate(["web", "client"]):
        TemplateVM.objects.create(version=version, name=name, index=index, domain_name=f"t-{name}")
    return version


def test_the_owner_sees_the_built_topology_with_its_macs(instructor):
    outcome = create_module(name="pair", description="", text=PAIR, user=instructor)
    built_version(outcome.module, outcome.revision)
    page = client_for(instructor).get("/modules/pair/").content.decode()
    assert 'id="topology"' in page and "<svg" in page
    assert "pair@1" in page
    assert 'data-mac="52:54:00:00:00:02"' in page and 'data-ip="10.10.0.254"' in page


def test_an_unbuilt_revision_shows_the_planned_addresses(instructor):
    outcome = create_module(name="pair", description="", text=PAIR, user=instructor)
    built_version(outcome.module, outcome.revision)
    save_manifest(
        module=outcome.module, text=PAIR.replace("10.10.0.10", "10.10.0.11"), user=instructor
    )
    page = client_for(instructor).get("/modules/pair/").content.decode()
    assert "revision r2, not built yet" in page
    assert 'data-ip="10.10.0.11"' in page and "52:54:00:00:00:01" not in page


def test_nobody_else_sees_the_picture(instructor, other_instructor, student):
    create_module(name="pair", description="", text=PAIR, user=instructor)
    assert "<svg" in client_for(instructor).get("/modules/pair/").content.decode()
    for user in (other_instructor, student):
        response = client_for(user).get("/modules/pair/")
        assert response.status_code in (302, 403)
        assert b"<svg" not in response.content
