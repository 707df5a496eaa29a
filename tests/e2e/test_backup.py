"""Backup and restore for real: a tiny module built under TCG, a backup taken with
`manage.py backup` while a clone of it runs and a worker is up, restored with `manage.py
restore` by a process of another "machine" (a new SQLite file, another var/ folder, another
storage root, another name prefix), and clones of the restored version checked inside the
guest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from accounts.roles import STUDENTS
from builds.models import BuildStatus, ModuleVersion
from builds.runner import execute_build
from builds.services import submit_manifest
from clones import services
from clones.models import Class, ClassMembership, Clone, CloneStatus
from clones.runner import run_inline
from modules.models import Module
from ruddervirt.backup.archive import sha256_of
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.redisconf import with_db
from tests.e2e import hostcheck
from tests.e2e.storage import qemu_reachable_folder
from tests.e2e.test_clones import MARKER, guest, login, qemu_img_info, tiny_manifest
from tests.e2e.workers import ROOT, command_env, manage, start_worker
from tests.helpers import make_user
from tests.specs import template_disks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]


class Fresh:
    """Another machine's portal: its own var/ (secret key), database, storage root, name
    prefix and Redis database; `manage` runs a command there, `rows` reads its database."""

    def __init__(self, base: Path) -> None:
        self.var = base / "var"
        self.var.mkdir(mode=0o711, parents=True)
        self.db = self.var / "ruddervirt.sqlite3"
        self.root = qemu_reachable_folder("restored")
        self.prefix = f"{settings.RUDDERVIRT_NAME_PREFIX}r-"
        self.env = {
            **command_env(),
            "RUDDERVIRT_VAR_DIR": str(self.var),
            "DATABASE_URL": f"sqlite:///{self.db}",
            "RUDDERVIRT_STORAGE_ROOT": str(self.root),
            "RUDDERVIRT_NAME_PREFIX": self.prefix,
            # No worker listens there: launch_class and clone_action work in their process.
            "REDIS_URL": with_db(settings.REDIS_URL, 12),
            "REDIS_PASSWORD": settings.REDIS_PASSWORD or "",
        }

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        print(f"\n$ manage.py {' '.join(args)}  (restored machine)\n{done.stdout}{done.stderr}")
        return done

    def rows(self, sql: str, *params) -> list[tuple]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            return db.execute(sql, params).fetchall()


def original_rows() -> dict[str, list]:
    """What must come back: modules, versions (and their records), classes and members."""
    return {
        "modules": sorted(Module.objects.values_list("name", "description")),
        "versions": sorted(
            (v.module.name, v.number, v.manifest_sha256, json.dumps(v.spec, sort_keys=True))
            for v in ModuleVersion.objects.select_related("module")
        ),
        "classes": sorted(
            (m.klass.name, m.student.username)
            for m in ClassMembership.objects.select_related("klass", "student")
        ),
    }


def restored_rows(fresh: Fresh) -> dict[str, list]:
    versions = fresh.rows(
        "SELECT m.name, v.number, v.manifest_sha256, v.spec FROM builds_moduleversion v "
        "JOIN modules_module m ON m.id = v.module_id"
    )
    return {
        "modules": sorted(fresh.rows("SELECT name, description FROM modules_module")),
        "versions": sorted(
            (name, number, sha, json.dumps(json.loads(spec), sort_keys=True))
            for name, number, sha, spec in versions
        ),
        "classes": sorted(
            fresh.rows(
                "SELECT c.name, u.username FROM clones_classmembership m JOIN clones_class c "
                "ON c.id = m.klass_id JOIN auth_user u ON u.id = m.student_id"
            )
        ),
    }


def check_marker(fresh: Fresh, clone_id: int) -> str:
    """Log in to the restored machine's clone `clone_id` and read what the build wrote."""
    [(port, disks)] = fresh.rows(
        "SELECT mgmt_port, disks FROM clones_clonevm WHERE clone_id = ?", clone_id
    )
    disk = json.loads(disks)[0]
    assert disk.startswith(str(fresh.root)), disk
    assert qemu_img_info(disk)["backing-filename"].startswith(str(fresh.root / "modules"))
    with login(port) as session:
        marker = guest(session, "cat /root/marker")
        print(f"clone {clone_id} (ssh 127.0.0.1:{port}, disk {disk}): /root/marker = {marker}")
        assert marker == MARKER
        return marker


def test_a_backup_taken_while_a_clone_runs_restores_onto_a_fresh_machine_that_clones_again(
    image_server, hv, storage, tmp_path
):
    owner = make_user("teacher", superuser=True)
    build = execute_build(
        submit_manifest(
            text=tiny_manifest(image_server), module_name="tiny", user=owner, queue=False
        ).pk
    )
    assert build.status == BuildStatus.SUCCEEDED, build.error
    version = ModuleVersion.objects.get(build=build)
    klass = Class.objects.create(name="Monday", owner=owner)
    ClassMembership.objects.create(klass=klass, student=make_user("ann", STUDENTS))
    [clone] = services.launch(klass, version, by=owner, queue=False)
    run_inline([clone.pk], "provision")
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING

    # The backup, while the clone runs and a worker of the portal is up.
    worker = start_worker("builds", "clones")
    dest = tmp_path / "backup"
    try:
        done = manage("backup", str(dest))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    print(f"\n$ manage.py backup {dest}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stderr
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING
    manifest = json.loads((dest / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    for f in manifest["files"]:
        print(f"  {f['path']}  {f['kind']}  mode {f['mode']:o}  {f['size']} bytes  {f['sha256']}")
    [disk] = template_disks(version)
    relative = f"storage/{Path(disk).relative_to(storage).as_posix()}"
    assert files[relative]["sha256"] == sha256_of(Path(disk))
    assert not [p for p in files if p.startswith(("storage/clones/", "storage/builds/"))]
    assert manifest["counts"]["clones"] == 1

    fresh = Fresh(tmp_path / "machine2")
    try:
        assert fresh.manage("migrate", "--verbosity", "0").returncode == 0  # as setup.sh does
        restored = fresh.manage("restore", str(dest))
        assert restored.returncode == 0, restored.stderr
        assert f"checked the sha256 of all {len(files)} files" in restored.stdout
        assert restored_rows(fresh) == original_rows()
        assert (fresh.var / "secret_key").read_text() == (
            Path(settings.VAR_DIR) / "secret_key"
        ).read_text()
        [(storage_path,)] = fresh.rows("SELECT storage_path FROM builds_moduleversion")
        assert storage_path == str(fresh.root / "modules" / "tiny" / "v1")
        restored_disk = fresh.root / Path(disk).relative_to(storage)
        assert sha256_of(restored_disk) == files[relative]["sha256"]
        [(template,)] = fresh.rows("SELECT domain_name FROM builds_templatevm")
        assert template.startswith(f"{fresh.prefix}tpl-")
        assert hv.state(template) == DomainState.SHUTOFF
        [(old_id, status, error)] = fresh.rows("SELECT id, status, error FROM clones_clone")
        assert status == CloneStatus.FAILED and "reprovision" in error

        # The restored clone is reprovisioned; a new student gets a clone of the version.
        again = fresh.manage("clone_action", str(old_id), "reprovision")
        assert again.stdout.strip() == f"clone {old_id}: Running", again.stderr
        check_marker(fresh, old_id)
        launched = fresh.manage(
            "launch_class", "--module", "tiny@1", "--class", "Monday", "--students", "newbie",
            "--wait", "--json",
        )  # fmt: skip
        assert launched.returncode == 0, launched.stderr
        [entry] = json.loads(launched.stdout.strip().splitlines()[-1])["clones"]
        assert entry["status"] == "Running"
        check_marker(fresh, entry["id"])
        for clone_id in (old_id, entry["id"]):
            gone = fresh.manage("clone_action", str(clone_id), "delete")
            assert gone.stdout.strip() == f"clone {clone_id}: deleted", gone.stderr
        assert not hv.list_domains(f"{fresh.prefix}c") and not hv.list_networks(fresh.prefix)
    finally:
        hostcheck.remove_everything(hv, fresh.prefix)  # its template domains
        shutil.rmtree(fresh.root, ignore_errors=True)
    services.request_action(clone, "delete", user=owner, queue=False)
    run_inline([clone.pk], "delete")
    assert not Clone.objects.exists()
