"""Upgrades (docs/operations.md#upgrading): a database of the previous release, with data in
it, migrates to the newest schema and keeps its data; every migration goes back or says it
does not; the models and the migrations agree; `check --deploy` is clean with the documented
production settings (deploy/ruddervirt.env)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from ruddervirt.hypervisor.domain_xml import mgmt_mac_for
from ruddervirt.spec import dump_spec, load_spec
from tests.clones.conftest import MANIFEST, MEMORY, NICS
from tests.helpers import client_for, migrate, migrate_to_newest
from tests.ops.proxy import deploy_environment
from tests.specs import version_of, vm_record

ROOT = Path(__file__).resolve().parents[2]
OUR_APPS = ("accounts", "modules", "jobs", "builds", "clones", "consoles")
# The previous release: the migration leaf nodes of commit da0f439 (2026-12-07, the last
# landed stop before the step cache and the supervised services), as `git ls-tree da0f439`
# lists them. Move it on to the newest leaves of each release when the next one lands.
PREVIOUS_RELEASE = [
    ("accounts", "0001_role_groups"),
    ("modules", "0001_initial"),
    ("jobs", "0001_initial"),
    ("builds", "0005_runs_are_operations"),
    ("clones", "0004_clonevm_readiness"),
    ("consoles", "0001_initial"),
]
# Migrations that cannot be reversed, each with why (docs/operations.md#upgrading says the
# same). None so far: every operation has a way back (RunPython with a reverse or a noop).
FORWARD_ONLY: dict[tuple[str, str], str] = {}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def previous_release():
    """A fresh database of the previous release: our apps taken back to nothing (every
    migration reversed), then forward to PREVIOUS_RELEASE; its historical models. Put back
    to the newest schema afterwards."""
    executor = MigrationExecutor(connection)
    executor.migrate([(app, None) for app in OUR_APPS])
    applied = {app for app, _ in MigrationRecorder(connection).applied_migrations()}
    assert not applied & set(OUR_APPS)
    apps = migrate(PREVIOUS_RELEASE)
    yield apps
    migrate_to_newest()


def old_data(apps, storage: Path) -> dict[str, int]:
    """What a class in progress leaves in the previous release's database: an instructor and
    two students, a module with two revisions, a succeeded build (its VMs, steps, log,
    history, operation) with version 1, a failed build, a class with a clone per student."""
    get = apps.get_model
    User, Group, ContentType = get("auth.User"), get("auth.Group"), get("contenttypes.ContentType")
    Module, Revision = get("modules.Module"), get("modules.ManifestRevision")
    Build, BuildVM, Step = get("builds.Build"), get("builds.BuildVM"), get("builds.BuildStep")
    Log, BuildChange = get("builds.BuildLogLine"), get("builds.BuildStatusChange")
    Version, Template = get("builds.ModuleVersion"), get("builds.TemplateVM")
    Operation = get("jobs.Operation")

    teacher = User.objects.create(username="old-teacher", password=make_password("pw-old"))
    teacher.groups.add(Group.objects.get(name="Instructors"))
    students = [User.objects.create(username=f"old-student{i}") for i in (1, 2)]
    module = Module.objects.create(name="lab", description="the lab", owner=teacher)
    texts = [MANIFEST.replace("cpu: 1, memory: 256Mi", "cpu: 2, memory: 256Mi"), MANIFEST]
    revisions = [
        Revision.objects.create(
            module=module,
            number=n,
            text=text,
            created_by=teacher,
            sha256=hashlib.sha256(text.encode()).hexdigest(),
        )
        for n, text in enumerate(texts, 1)
    ]
    now = timezone.now()
    build = Build.objects.create(
        module=module,
        revision=revisions[1],
        manifest_text=MANIFEST,
        requested_by=teacher,
        manifest_sha256=revisions[1].sha256,
        status="Succeeded",
        started_at=now,
        finished_at=now + timedelta(minutes=3),
        timeout_s=1800,
        memory_bytes=384 << 20,
    )
    failed = Build.objects.create(
        module=module,
        revision=revisions[0],
        manifest_text=texts[0],
        requested_by=teacher,
        manifest_sha256=revisions[0].sha256,
        status="Failed",
        error="VM web: shell step failed",
    )
    records = []
    for index, vm in enumerate(("web", "dc")):
        domain = f"rv-b{build.pk}-{vm}"
        build_vm = BuildVM.objects.create(build=build, name=vm, index=index, domain_name=domain)
        Step.objects.create(
            vm=build_vm,
            index=0,
            name="setup",
            type="shell",
            status="Succeeded",
            duration_s=4.5,
            exit_code=0,
        )
        records.append(
            vm_record(
                vm,
                memory=MEMORY[vm],
                nics=NICS[vm],
                invisible=vm == "dc",
                disks=[("root", f"modules/lab/v1/{vm}/root.qcow2", 64 << 20)],
                mgmt_mac=mgmt_mac_for(domain),
            )
        )
    for seq, text in enumerate(["booting web", "setup: ok", "captured"]):
        Log.objects.create(build=build, seq=seq, created_at=now, vm="web", text=text)
    for before, after in (("", "Queued"), ("Queued", "Running"), ("Running", "Succeeded")):
        BuildChange.objects.create(subject=build, from_status=before, to_status=after)
    build_type = ContentType.objects.get_or_create(app_label="builds", model="build")[0]
    Operation.objects.create(
        kind="build",
        target_type=build_type,
        target_id=build.pk,
        status="Succeeded",
        queue="builds",
        outcome="Succeeded",
        requested_by=teacher,
        finished_at=now,
    )
    version = Version.objects.create(
        module=module,
        number=1,
        build=build,
        manifest_text=MANIFEST,
        manifest_sha256=revisions[1].sha256,
        storage_path=str(storage / "modules/lab/v1"),
        spec=dump_spec(version_of(MANIFEST, records)),
    )
    for index, vm in enumerate(("web", "dc")):
        Template.objects.create(version=version, name=vm, index=index, domain_name=f"rv-t-{vm}")
    klass, clones = old_class(apps, teacher, students, version)
    return {
        "teacher": teacher.pk,
        "module": module.pk,
        "build": build.pk,
        "failed": failed.pk,
        "version": version.pk,
        "class": klass,
        "clone1": clones[0],
        "clone2": clones[1],
        "student1": students[0].pk,
    }


def old_class(apps, teacher, students, version) -> tuple[int, list[int]]:
    """A class of the previous release's models: a running clone of `version` per student."""
    get = apps.get_model
    Class, Membership = get("clones.Class"), get("clones.ClassMembership")
    Clone, CloneVM = get("clones.Clone"), get("clones.CloneVM")
    CloneChange = get("clones.CloneStatusChange")
    now = timezone.now()
    klass = Class.objects.create(name="Networks 101", owner=teacher)
    klass.instructors.add(teacher)
    clones = []
    for student in students:
        Membership.objects.create(klass=klass, student=student)
        clone = Clone.objects.create(
            klass=klass,
            student=student,
            version=version,
            status="Running",
            created_by=teacher,
            started_at=now,
        )
        for index, vm in enumerate(("web", "dc")):
            CloneVM.objects.create(
                clone=clone,
                name=vm,
                index=index,
                invisible=vm == "dc",
                domain_name=f"rv-c{clone.pk}-{vm}",
                nics=NICS[vm],
                state="running",
                ready_via="ssh",
                ready_s=8.5,
            )
        CloneChange.objects.create(subject=clone, from_status="Starting", to_status="Running")
        clones.append(clone.pk)
    return klass.pk, clones


def test_the_previous_release_targets_are_migrations_this_release_still_has():
    graph = MigrationLoader(connection, ignore_no_migrations=True).graph
    leaves = dict(graph.leaf_nodes())
    for app, name in PREVIOUS_RELEASE:
        assert (app, name) in graph.nodes, f"{app}.{name} is gone: squashed or renamed?"
        assert (app, name) in graph.forwards_plan((app, leaves[app]))
    assert {app for app, _ in PREVIOUS_RELEASE} == set(OUR_APPS)


def test_a_database_of_the_previous_release_with_a_class_in_progress_upgrades_with_its_data(
    previous_release, tmp_path
):
    ids = old_data(previous_release, tmp_path)
    migrate_to_newest()

    from builds.models import Build, BuildStatus, ModuleVersion
    from clones.models import Class, Clone, CloneStatus
    from jobs.models import Operation
    from modules.models import Module

    module = Module.objects.get(pk=ids["module"])
    assert [r.number for r in module.revisions.order_by("number")] == [1, 2]
    build = Build.objects.get(pk=ids["build"])
    assert build.status == BuildStatus.SUCCEEDED and build.use_cache  # the new field's default
    steps = build.vms.get(name="web").steps.all()
    assert [(s.status, s.cache_key, s.reused_from) for s in steps] == [("Succeeded", "", None)]
    assert [h.to_status for h in build.history.all()] == ["Queued", "Running", "Succeeded"]
    assert build.log_lines.count() == 3
    assert Operation.objects.for_target(build).get().outcome == "Succeeded"
    assert Build.objects.get(pk=ids["failed"]).error == "VM web: shell step failed"
    version = ModuleVersion.objects.get(pk=ids["version"])
    assert version.build_id == build.pk and version.number == 1
    spec = load_spec(version.spec)
    assert [(vm.name, vm.memory, vm.invisible) for vm in spec.vms] == [
        ("web", MEMORY["web"], False),
        ("dc", MEMORY["dc"], True),
    ]
    klass = Class.objects.get(pk=ids["class"])
    assert klass.students.count() == 2 and klass.instructors.get().pk == ids["teacher"]
    clone = Clone.objects.get(pk=ids["clone1"])
    assert clone.status == CloneStatus.RUNNING and clone.version_id == version.pk
    assert [vm.nics for vm in clone.vms.order_by("index")] == [NICS["web"], NICS["dc"]]

    # The newest code reads it: the instructor's module page, a student's own lab only.
    teacher = module.owner
    assert teacher.check_password("pw-old")
    page = client_for(teacher).get(f"/modules/{module.name}/")
    assert page.status_code == 200 and b"lab@1" in page.content
    labs = client_for(clone.student).get("/labs/")
    assert labs.status_code == 200
    assert f"/clones/{ids['clone1']}/".encode() in labs.content
    assert f"/clones/{ids['clone2']}/".encode() not in labs.content


def test_every_migration_can_be_reversed_or_is_declared_forward_only():
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    irreversible = {
        key: [type(op).__name__ for op in migration.operations if not op.reversible]
        for key, migration in loader.disk_migrations.items()
        if key[0] in OUR_APPS
    }
    irreversible = {key: ops for key, ops in irreversible.items() if ops}
    assert set(irreversible) == set(FORWARD_ONLY), (
        f"irreversible migrations {irreversible}: give them a reverse, or list them in "
        "FORWARD_ONLY with the reason and say so in docs/operations.md#upgrading"
    )
    upgrading = (ROOT / "docs" / "operations.md").read_text()
    for app, name in FORWARD_ONLY:
        assert f"{app}.{name}" in upgrading


def test_the_models_need_no_migration_that_is_not_written():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)  # exits 1 otherwise
    assert "No changes detected" in out.getvalue()


def check_deploy(**overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **deploy_environment(), "DJANGO_SETTINGS_MODULE": "ruddervirt.settings"}
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_settings():
    done = check_deploy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


def test_check_deploy_warns_when_a_documented_setting_is_left_out():
    done = check_deploy(DJANGO_SECURE_HSTS_SECONDS="0", DJANGO_SESSION_COOKIE_SECURE="false")
    assert done.returncode == 1
    assert "security.W004" in done.stderr and "security.W012" in done.stderr
