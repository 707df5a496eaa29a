"""Clone fixtures without real VMs: a module version whose template disks are small blank
qcow2 files, a FakeHypervisor wired in as the portal's hypervisor, a class of students."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from accounts.roles import STUDENTS
from builds.models import Build, BuildStatus, BuildVM, ModuleVersion, TemplateVM
from clones.models import Class, ClassMembership
from modules.services import create_module
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.spec import dump_spec
from tests.helpers import make_user
from tests.specs import version_of, vm_record

MIB = 1024 * 1024

MANIFEST = """\
network:
  vpcs: [{name: lab}]
  subnets: [{name: lan, vpc: lab, cidr: 10.10.0.0/24}]
vms:
  - name: web
    source: {url: "http://127.0.0.1:9/tiny-20250101.qcow2"}
    resources: {cpu: 1, memory: 256Mi}
    nics: [{name: eth0, subnet: lan, slot: 1, ip: 10.10.0.10}]
  - name: dc
    source: {url: "http://127.0.0.1:9/tiny-20250101.qcow2"}
    resources: {cpu: 1, memory: 128Mi}
    invisible: true
    nics: [{name: eth0, subnet: lan, slot: 2}]
"""

NICS = {
    "web": [{"name": "eth0", "subnet": "lan", "slot": 1, "mac": "52:54:00:0a:00:01",
             "ip": "10.10.0.10", "static": True, "model": "virtio"}],
    "dc": [{"name": "eth0", "subnet": "lan", "slot": 2, "mac": "52:54:00:0a:00:02",
            "ip": "10.10.0.254", "static": False, "model": "virtio"}],
}  # fmt: skip
MEMORY = {"web": 256 * MIB, "dc": 128 * MIB}


def make_version(owner, root: Path, *, name: str = "lab", memory: dict | None = None):
    """A module with one succeeded build and its version: template VMs web and dc (dc
    invisible), each with one small blank template disk under `root`."""
    outcome = create_module(name=name, description="", text=MANIFEST, user=owner)
    build = Build.objects.create(
        module=outcome.module,
        revision=outcome.revision,
        manifest_text=MANIFEST,
        manifest_sha256=outcome.revision.sha256,
        requested_by=owner,
        status=BuildStatus.SUCCEEDED,
    )
    folder = root / "modules" / name / "v1"
    records = []
    for index, vm in enumerate(("web", "dc")):
        disk = folder / vm / "root.qcow2"
        disk.parent.mkdir(parents=True, exist_ok=True)
        if not disk.exists():
            qimg.create_blank(disk, 64 * MIB)
        domain = f"rvt-b{build.pk}-{vm}"
        BuildVM.objects.create(build=build, name=vm, index=index, domain_name=domain)
        records.append(
            vm_record(
                vm,
                memory=(memory or MEMORY)[vm],
                disks=[("root", f"modules/{name}/v1/{vm}/root.qcow2", 64 * MIB)],
                nics=NICS[vm],
                invisible=vm == "dc",
                mgmt_mac=mgmt_mac_for(domain),
            )
        )
    version = ModuleVersion.objects.create(
        module=outcome.module,
        number=1,
        build=build,
        manifest_text=MANIFEST,
        manifest_sha256=outcome.revision.sha256,
        storage_path=str(folder),
        spec=dump_spec(version_of(MANIFEST, records)),
    )
    for index, vm in enumerate(("web", "dc")):
        TemplateVM.objects.create(version=version, name=vm, index=index, domain_name=f"tpl-{vm}")
    return version


@pytest.fixture
def storage(settings, tmp_path) -> Path:
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path / "storage"
    return settings.RUDDERVIRT_STORAGE_ROOT


@pytest.fixture
def fake_hv(monkeypatch):
    """A FakeHypervisor used wherever the portal asks for its hypervisor."""
    hv = FakeHypervisor(name_prefix=settings.RUDDERVIRT_NAME_PREFIX)
    monkeypatch.setattr("ruddervirt.runtime._hypervisor", hv)
    return hv


@pytest.fixture
def version(instructor, storage):
    return make_version(instructor, storage)


@pytest.fixture
def second_student(db):
    return make_user("dave", STUDENTS)


@pytest.fixture
def klass(instructor, student, second_student):
    klass = Class.objects.create(name="Networks 101", owner=instructor)
    for s in (student, second_student):
        ClassMembership.objects.create(klass=klass, student=s)
    return klass
