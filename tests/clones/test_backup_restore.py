"""`manage.py backup` and `manage.py restore` without VMs: a version whose template disk is a
real two-image qcow2 chain, a class with a running clone, the fake hypervisor; the test
database itself is backed up, emptied and restored onto another storage root."""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings

from builds.models import Build, BuildStatus, ModuleVersion, TemplateVM
from clones.models import Class, Clone, CloneStatus, CloneVM
from consoles.models import ConsoleToken
from jobs.models import Operation, OperationStatus
from modules.models import Module
from ruddervirt.backup import archive
from ruddervirt.backup.archive import BackupError
from ruddervirt.backup.make import make_backup
from ruddervirt.backup.restore import restore_backup
from ruddervirt.hypervisor import disks as qimg
from tests.clones.conftest import make_version

pytestmark = pytest.mark.django_db(transaction=True)
MIB = 1024 * 1024
TOP = "storage/modules/lab/v1/web/root.qcow2"
BASE = "storage/modules/lab/v1/web/base.qcow2"


@pytest.fixture
def lab(instructor, student, storage, fake_hv):
    """Version lab@1: web's template disk an overlay on a base image (a chain), dc's a
    single image; a class whose clone of it is running."""
    version = make_version(instructor, storage)
    folder = storage / "modules" / "lab" / "v1" / "web"
    (folder / "root.qcow2").unlink()
    qimg.create_blank(folder / "base.qcow2", 64 * MIB)
    qimg.create_overlay(folder / "base.qcow2", folder / "root.qcow2", backing_format="qcow2")
    klass = Class.objects.create(name="Networks 101", owner=instructor)
    clone = Clone.objects.create(
        klass=klass, student=student, version=version, created_by=instructor,
        status=CloneStatus.RUNNING, storage_path=str(storage / "clones" / "1"),
    )  # fmt: skip
    CloneVM.objects.create(
        clone=clone, name="web", index=0, domain_name="rvt-c1-web", mgmt_port=40022,
        disks=[str(storage / "clones/1/web-root.qcow2")], state="running",
    )  # fmt: skip
    return version


def emptied() -> None:
    """The portal's database as on a fresh machine: migrated, without any rows."""
    call_command("flush", interactive=False, verbosity=0)


def test_a_backup_restored_onto_an_empty_database_and_another_storage_root_gives_it_all_back(
    lab, tmp_path, fake_hv, settings
):
    dest = tmp_path / "backup"
    lines: list[str] = []
    make_backup(dest, echo=lines.append)
    manifest = json.loads((dest / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert {TOP, BASE, "storage/modules/lab/v1/dc/root.qcow2", "database.sqlite3"} <= set(listed)
    assert listed[TOP]["backing"] == BASE
    # Inside the backup, the chain holds together by itself: a relative reference.
    assert qimg.backing_of(dest / TOP) == ("base.qcow2", "qcow2")
    assert manifest["counts"]["clones"] == 1 and manifest["counts"]["modules"] == 1
    assert not any("clones/" in name for name in listed)

    emptied()
    new_root = tmp_path / "elsewhere"
    new_root.mkdir()
    with override_settings(RUDDERVIRT_STORAGE_ROOT=new_root):
        done = restore_backup(dest, echo=lines.append)
    assert done.versions == 1 and done.clones_marked == 1

    version = ModuleVersion.objects.get()
    assert str(version) == "lab@1" and version.storage_path == str(new_root / "modules/lab/v1")
    top = new_root / "modules/lab/v1/web/root.qcow2"
    assert qimg.backing_of(top) == (str(new_root / "modules/lab/v1/web/base.qcow2"), "qcow2")
    assert (
        archive.sha256_of(new_root / "modules/lab/v1/dc/root.qcow2")
        == (listed["storage/modules/lab/v1/dc/root.qcow2"]["sha256"])
    )
    # The templates are defined again, and the rows name them.
    names = set(TemplateVM.objects.values_list("domain_name", flat=True))
    assert names == set(done.templates) and len(names) == 2
    assert all(fake_hv.state(name) for name in names)
    assert {d.name for d in fake_hv.list_domains("")} >= names
    # The clone's disks are not in a backup: failed, to be reprovisioned, nothing pinned.
    clone = Clone.objects.get()
    assert clone.status == CloneStatus.FAILED and "reprovision" in clone.error
    assert clone.history.filter(to_status=CloneStatus.FAILED).exists()
    vm = CloneVM.objects.get()
    assert (vm.mgmt_port, vm.disks, vm.state) == (0, [], "")
    assert Class.objects.get().name == "Networks 101"


def test_builds_and_runs_in_flight_during_the_backup_are_settled_by_the_restore(
    lab, tmp_path, instructor
):
    module = Module.objects.get()
    running = Build.objects.create(
        module=module, revision=module.revisions.first(), manifest_text="x",
        manifest_sha256="0" * 64, requested_by=instructor, status=BuildStatus.BUILDING,
    )  # fmt: skip
    op = Operation.objects.create(
        kind="build", target_type=ContentType.objects.get_for_model(Build),
        target_id=running.pk, status=OperationStatus.RUNNING,
    )  # fmt: skip
    make_backup(tmp_path / "b", echo=lambda _: None)
    emptied()
    with override_settings(RUDDERVIRT_STORAGE_ROOT=tmp_path / "elsewhere"):
        restore_backup(tmp_path / "b", echo=lambda _: None)
    assert Build.objects.get(pk=running.pk).status == BuildStatus.FAILED
    assert Operation.objects.get(pk=op.pk).status == OperationStatus.INTERRUPTED


def test_a_corrupted_backup_is_refused_naming_the_file_before_anything_is_written(
    lab, tmp_path, settings
):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    disk = dest / "storage/modules/lab/v1/dc/root.qcow2"
    data = bytearray(disk.read_bytes())
    data[-1] ^= 0xFF
    disk.chmod(0o600)
    disk.write_bytes(bytes(data))
    emptied()
    new_root = tmp_path / "elsewhere"
    settings.RUDDERVIRT_STORAGE_ROOT = new_root
    with pytest.raises(BackupError, match=r"corrupt: storage/modules/lab/v1/dc/root\.qcow2 has"):
        restore_backup(dest, echo=lambda _: None)
    assert not new_root.exists() or not any(new_root.rglob("*.qcow2"))
    assert not Module.objects.exists()


def test_restore_refuses_a_database_that_is_not_empty_unless_forced(lab, tmp_path, capsys):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    with pytest.raises(SystemExit) as exited:
        call_command("restore", str(dest))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "restore: refused: the target database is not empty" in err and "--force" in err
    assert "modules.Module" in err

    call_command("restore", str(dest), "--force")
    assert ModuleVersion.objects.count() == 1 and Clone.objects.get().status == CloneStatus.FAILED


def test_backup_refuses_a_template_disk_whose_backing_file_is_missing(lab, tmp_path, storage):
    (storage / "modules/lab/v1/web/base.qcow2").unlink()
    dest = tmp_path / "backup"
    with pytest.raises(BackupError, match=r"base\.qcow2 \(the backing file of .*root\.qcow2\) is"):
        make_backup(dest, echo=lambda _: None)
    assert not dest.exists() and not (tmp_path / "backup.partial").exists()


def test_restore_refuses_a_backup_whose_backing_file_is_missing(lab, tmp_path):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    (dest / BASE).unlink()
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != BASE]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    emptied()
    with pytest.raises(BackupError, match=f"the backing file {BASE} of {TOP} is not in it"):
        restore_backup(dest, echo=lambda _: None)


def test_restore_refuses_a_backup_missing_a_disk_its_versions_need(lab, tmp_path):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    gone = "storage/modules/lab/v1/dc/root.qcow2"
    (dest / gone).unlink()
    with pytest.raises(BackupError, match=f"incomplete: {gone} is missing"):
        restore_backup(dest, force=True, echo=lambda _: None)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != gone]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=f"lab@1 VM dc needs {gone}, which is not in it"):
        restore_backup(dest, force=True, echo=lambda _: None)


def test_restore_refuses_a_backup_from_a_newer_schema(lab, tmp_path):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["database"]["migrations"].append(["builds", "9999_from_the_future"])
    (dest / "manifest.json").write_text(json.dumps(manifest))
    emptied()
    with pytest.raises(BackupError, match=r"newer RudderVirt: its migration builds\.9999_from"):
        restore_backup(dest, echo=lambda _: None)


def test_a_backup_is_private_and_never_overwrites_a_backup(lab, tmp_path, settings):
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for path in dest.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert (dest / "secret_key").read_text() == (Path(settings.VAR_DIR) / "secret_key").read_text()

    with pytest.raises(BackupError, match="exists; refusing to overwrite"):
        make_backup(dest, echo=lambda _: None)
    (tmp_path / "again.partial").mkdir()
    with pytest.raises(BackupError, match="left from an interrupted backup"):
        make_backup(tmp_path / "again", echo=lambda _: None)


def test_a_tar_backup_is_private_and_restores_like_a_folder(lab, tmp_path):
    dest = tmp_path / "lab.tar"
    call_command("backup", str(dest))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("lab.tar.partial*"))
    with tarfile.open(dest) as tar:
        assert {TOP, BASE, "manifest.json"} <= set(tar.getnames())
    emptied()
    new_root = tmp_path / "elsewhere"
    with override_settings(RUDDERVIRT_STORAGE_ROOT=new_root):
        call_command("restore", str(dest))
    assert qimg.backing_of(new_root / TOP.removeprefix("storage/"))[0] == str(new_root / BASE[8:])
    assert not list(new_root.glob(".restore-*"))  # the unpacked copy is gone
    assert new_root.stat().st_mode & 0o011 == 0o011  # not made private: QEMU enters it


def test_backup_never_reads_a_disk_where_builds_write(lab, tmp_path, storage):
    folder = storage / "modules/lab/v1/web"
    build_disk = storage / "builds" / "7" / "web.qcow2"
    build_disk.parent.mkdir(parents=True)
    qimg.create_blank(build_disk, 64 * MIB)
    (folder / "root.qcow2").unlink()
    qimg.create_overlay(build_disk, folder / "root.qcow2", backing_format="qcow2")
    with pytest.raises(BackupError, match="is in builds/, where running builds write"):
        make_backup(tmp_path / "backup", echo=lambda _: None)
    assert not (tmp_path / "backup").exists()


def test_a_backup_of_an_older_schema_is_migrated_forward_by_the_restore(lab, tmp_path):
    call_command("migrate", "consoles", "zero", verbosity=0)  # the schema before consoles
    try:
        make_backup(tmp_path / "old", echo=lambda _: None)
    finally:
        call_command("migrate", verbosity=0)
    old = json.loads((tmp_path / "old/manifest.json").read_text())["database"]["migrations"]
    assert ["consoles", "0001_initial"] not in old and ["clones", "0001_initial"] in old
    emptied()
    with override_settings(RUDDERVIRT_STORAGE_ROOT=tmp_path / "elsewhere"):
        restore_backup(tmp_path / "old", echo=lambda _: None)
    assert ("consoles", "0001_initial") in MigrationRecorder(connection).applied_migrations()
    assert ConsoleToken.objects.count() == 0 and ModuleVersion.objects.count() == 1


def test_a_postgresql_portal_is_told_that_only_sqlite_is_backed_up_for_now(lab, tmp_path):
    from ruddervirt.backup import database

    with pytest.raises(BackupError, match=r"postgresql database are not supported yet.*pg_dump"):
        database.for_connection({"ENGINE": "django.db.backends.postgresql", "NAME": "rv"})
    dest = tmp_path / "backup"
    make_backup(dest, echo=lambda _: None)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["database"]["engine"] = "postgresql"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="holds a postgresql database; this portal uses sqlite"):
        restore_backup(dest, force=True, echo=lambda _: None)
