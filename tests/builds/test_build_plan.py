"""What a build asks of the host is kept on its rows when it is submitted: the job queue,
the capacity checks and the handbuild console read those, never the manifest text again
(a later, stricter validator must not break a build already accepted)."""

from __future__ import annotations

import pytest

from builds.consoles import handbuild_waits
from builds.jobs import job_timeout_for
from builds.models import Build, BuildStatus, BuildStep, StepStatus
from builds.services import submit_manifest
from ruddervirt import capacity
from ruddervirt.manifest import parse
from tests.helpers import make_user, migrate, migrate_to_newest

pytestmark = pytest.mark.django_db

GIB, MIB = 1024**3, 1024**2
SOURCE = "http://127.0.0.1:9/tiny-20250101.qcow2"
MANIFEST = f"""\
timeout: 40m
retries: 2
buildOverrides:
  vms: [{{name: web, resources: {{memory: 1Gi}}}}]
vms:
  - name: web
    source: {{url: "{SOURCE}"}}
    resources: {{cpu: 1, memory: 256Mi}}
    disks: [{{name: root, size: 4Gi}}, {{name: data, size: 1Gi}}]
    cloudInit: {{}}
    provisioners:
      - type: shell
        shell: {{inline: "true"}}
      - name: tune by hand
        type: handbuild
        stepTimeout: 10m
        handbuild: {{instructions: "Open the console and tune it."}}
  - name: db
    source: {{url: "{SOURCE}"}}
    resources: {{cpu: 1, memory: 128Mi}}
"""


@pytest.fixture
def build() -> Build:
    owner = make_user("planner", superuser=True)
    return submit_manifest(text=MANIFEST, module_name="plan", user=owner, queue=False)


def test_a_submitted_build_keeps_its_timeout_retries_memory_and_disks(build):
    build.refresh_from_db()
    assert (build.timeout_s, build.retries) == (40 * 60, 2)
    # buildOverrides apply: web builds with 1Gi; db keeps 128Mi.
    assert build.memory_bytes == 1 * GIB + 128 * MIB
    db_disks = sum(d.size for d in parse(MANIFEST).vm("db").disks)  # its default disk
    assert build.disk_bytes == 5 * GIB + db_disks


def test_each_step_keeps_its_instructions_and_timeout(build):
    shell, hand = BuildStep.objects.filter(vm__build=build, vm__name="web").order_by("index")
    assert (shell.instructions, shell.timeout_s) == ("", None)
    assert hand.instructions == "Open the console and tune it."
    assert hand.timeout_s == 600


def test_an_accepted_build_whose_text_no_longer_parses_still_queues_counts_and_waits(build):
    Build.objects.filter(pk=build.pk).update(
        manifest_text="vms: [this no longer validates", status=BuildStatus.BUILDING
    )
    BuildStep.objects.filter(vm__build=build, index=1).update(status=StepStatus.WAITING_FOR_USER)
    build.refresh_from_db()
    assert job_timeout_for(build) == 40 * 60 * 3 + 900
    (wait,) = handbuild_waits(build)
    assert (wait.vm, wait.instructions) == ("web", "Open the console and tune it.")
    overhead = capacity.setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    assert capacity.committed_memory() == 1 * GIB + 128 * MIB + 2 * overhead


def test_the_capacity_check_counts_a_build_as_its_rows_say(build):
    memory, disk = capacity.per_build(parse(MANIFEST))
    build.refresh_from_db()
    overhead = capacity.setting("RUDDERVIRT_CLONE_MEMORY_OVERHEAD")
    assert (memory, disk) == (build.memory_bytes + 2 * overhead, build.disk_bytes)


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_rows_of_existing_builds_from_their_manifest():
    apps = migrate([("builds", "0002_version_spec")])
    try:
        User = apps.get_model("auth", "User")
        Module = apps.get_model("modules", "Module")
        Build_, BuildVM_ = apps.get_model("builds", "Build"), apps.get_model("builds", "BuildVM")
        Step_ = apps.get_model("builds", "BuildStep")
        owner = User.objects.create(username="old")
        module = Module.objects.create(name="old", owner=owner)
        made = {"module": module, "manifest_sha256": "0" * 64, "requested_by": owner}
        old = Build_.objects.create(manifest_text=MANIFEST, **made)
        unreadable = Build_.objects.create(manifest_text="{not: [yaml", **made)
        web = BuildVM_.objects.create(build=old, name="web", index=0)
        Step_.objects.create(vm=web, index=1, name="tune by hand", type="handbuild")
        apps = migrate([("builds", "0003_build_plan")])
        Build_, Step_ = apps.get_model("builds", "Build"), apps.get_model("builds", "BuildStep")
        old, unreadable = Build_.objects.get(pk=old.pk), Build_.objects.get(pk=unreadable.pk)
        assert (old.timeout_s, old.retries, old.memory_bytes) == (2400, 2, 1 * GIB + 128 * MIB)
        assert (unreadable.timeout_s, unreadable.memory_bytes) == (30 * 60, 0)
        step = Step_.objects.get(vm__build=old)
        assert (step.instructions, step.timeout_s) == ("Open the console and tune it.", 600)
    finally:
        migrate_to_newest()
