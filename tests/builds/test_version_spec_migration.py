"""Migration builds 0002: a version stored the old way (a spec dict per TemplateVM) gets
its version record, and going back gives the old dicts again."""

from __future__ import annotations

import hashlib

import pytest

from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.spec import load_spec
from tests.clones.conftest import MANIFEST
from tests.helpers import migrate, migrate_to_newest

BEFORE = [("builds", "0001_initial")]
AFTER = [("builds", "0002_version_spec")]
MIB = 1024 * 1024


@pytest.fixture
def old_schema():
    """The database as it was before the version record; put back to the newest after."""
    apps = migrate(BEFORE)
    yield apps
    migrate_to_newest()


def old_version(apps, root) -> tuple[int, dict[str, dict]]:
    """A version of MANIFEST as the old capture stored it: web (UEFI, its NVRAM captured)
    and dc, whose NIC the build left without an address."""
    User = apps.get_model("auth", "User")
    Module = apps.get_model("modules", "Module")
    Revision = apps.get_model("modules", "ManifestRevision")
    Build, BuildVM = apps.get_model("builds", "Build"), apps.get_model("builds", "BuildVM")
    Version, Template = (
        apps.get_model("builds", "ModuleVersion"),
        apps.get_model("builds", "TemplateVM"),
    )
    owner = User.objects.create(username="old-owner")
    module = Module.objects.create(name="lab", owner=owner)
    revision = Revision.objects.create(module=module, number=1, text=MANIFEST, sha256="0" * 64,
                                       created_by=owner)  # fmt: skip
    build = Build.objects.create(module=module, revision=revision, manifest_text=MANIFEST,
                                 manifest_sha256="0" * 64, requested_by=owner)  # fmt: skip
    BuildVM.objects.create(build=build, name="web", index=0, domain_name="rvt-b9-web")
    folder = root / "modules/lab/v1"
    version = Version.objects.create(
        module=module, number=1, build=build, manifest_text=MANIFEST, manifest_sha256="0" * 64,
        storage_path=str(folder),
    )  # fmt: skip
    (folder / "web").mkdir(parents=True)
    (folder / "web/nvram.fd").write_bytes(b"variables the build left")
    nic = {"name": "eth0", "subnet": "lan", "static": False, "model": "virtio"}
    specs = {
        "web": {
            "cpu": 1, "memory": 256 * MIB, "invisible": False,
            "disks": [{"name": "root", "path": str(folder / "web/root.qcow2"), "bus": "virtio",
                       "size": 64 * MIB}],
            "nics": [{**nic, "slot": 1, "mac": "52:54:00:0a:00:01", "ip": "10.10.0.10",
                      "static": True}],
            "efi": {"secure_boot": False, "machine": "pc", "nvram": str(folder / "web/nvram.fd")},
            "communicator": {"ssh_username": "root", "ssh_port": 22, "shell": "bash"},
        },
        "dc": {
            "cpu": 1, "memory": 128 * MIB, "invisible": True,
            "disks": [{"name": "root", "path": str(folder / "dc/root.qcow2"), "bus": "virtio",
                       "size": 64 * MIB}],
            "nics": [{**nic, "slot": 2, "mac": "52:54:00:0a:00:02", "ip": None}],
            "efi": None,
            "communicator": {"ssh_username": "root", "ssh_port": 22, "shell": "bash"},
        },
    }  # fmt: skip
    for index, (name, spec) in enumerate(specs.items()):
        Template.objects.create(version=version, name=name, index=index, domain_name=f"t-{name}",
                                spec=spec)  # fmt: skip
    return version.pk, specs


@pytest.mark.django_db(transaction=True)
def test_a_version_stored_the_old_way_gets_its_version_record(old_schema, settings, tmp_path):
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path
    settings.RUDDERVIRT_NAME_PREFIX = "rvt-"
    pk, _old = old_version(old_schema, tmp_path)
    apps = migrate(AFTER)
    version = apps.get_model("builds", "ModuleVersion").objects.get(pk=pk)
    spec = load_spec(version.spec)
    web, dc = spec.vms
    assert (web.cpu, web.memory, dc.memory, dc.invisible) == (1, 256 * MIB, 128 * MIB, True)
    assert str(web.disks[0].path) == "modules/lab/v1/web/root.qcow2"  # under the storage root
    assert web.disks[0].boot_order == 1 and web.disks[0].format == "qcow2"
    assert web.mgmt.mac == mgmt_mac_for("rvt-b9-web")  # the build VM's, as clones derived it
    assert dc.mgmt.mac == mgmt_mac_for(f"rvt-b{version.build_id}-dc")  # no BuildVM row: named
    assert web.firmware.kind == "uefi" and str(web.firmware.loader).endswith("OVMF_CODE_4M.fd")
    assert str(web.firmware.nvram.path) == "modules/lab/v1/web/nvram.fd"
    assert web.firmware.nvram.sha256 == hashlib.sha256(b"variables the build left").hexdigest()
    assert dc.firmware.kind == "bios"
    assert [(n.mac, n.ip, n.static) for n in web.nics] == [
        ("52:54:00:0a:00:01", "10.10.0.10", True)
    ]
    # The address every clone of it was given (from the top of the subnet), now recorded.
    assert [(n.mac, n.ip) for n in dc.nics] == [("52:54:00:0a:00:02", "10.10.0.254")]
    assert [s.cidr for s in spec.topology.subnets] == ["10.10.0.0/24"]
    assert not hasattr(apps.get_model("builds", "TemplateVM")(), "spec")


@pytest.mark.django_db(transaction=True)
def test_going_back_writes_the_old_dicts_again(old_schema, settings, tmp_path):
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path
    pk, old = old_version(old_schema, tmp_path)
    migrate(AFTER)
    apps = migrate(BEFORE)
    Template = apps.get_model("builds", "TemplateVM")
    back = {t.name: t.spec for t in Template.objects.filter(version_id=pk)}
    assert back["web"] == old["web"]
    assert back["dc"] == {**old["dc"], "nics": [{**old["dc"]["nics"][0], "ip": "10.10.0.254"}]}
