"""Migrations builds 0005 and clones 0003: a run under way when the job model arrives keeps
going as an operation (Running with its worker, or Queued with its RQ job), so the reconcile
settles it like any other run."""

from __future__ import annotations

import pytest

from tests.helpers import migrate, migrate_to_newest

pytestmark = pytest.mark.django_db(transaction=True)
BEFORE = [("builds", "0004_buildstatuschange"), ("jobs", "0001_initial")]
AFTER = [("builds", "0005_runs_are_operations")]


@pytest.fixture
def old_apps():
    apps = migrate(BEFORE)
    yield apps
    migrate_to_newest()


def test_builds_under_way_become_operations_and_finished_ones_do_not(old_apps):
    User = old_apps.get_model("auth", "User")
    Module = old_apps.get_model("modules", "Module")
    Build = old_apps.get_model("builds", "Build")
    owner = User.objects.create(username="old")
    module = Module.objects.create(name="old", owner=owner)
    made = {"module": module, "manifest_sha256": "0" * 64, "requested_by": owner,
            "manifest_text": "name: old\n"}  # fmt: skip
    working = Build.objects.create(status="Building", worker="host-a:4242", job_id="rq-a", **made)
    waiting = Build.objects.create(status="Pending", job_id="rq-b", **made)
    Build.objects.create(status="Succeeded", worker="host-a:1", job_id="rq-c", **made)

    apps = migrate(AFTER)
    Operation = apps.get_model("jobs", "Operation")
    ops = {op.target_id: op for op in Operation.objects.all()}
    assert set(ops) == {working.pk, waiting.pk}
    run, queued = ops[working.pk], ops[waiting.pk]
    assert (run.kind, run.status, run.worker, run.rq_job_id) == (
        "build", "Running", "host-a:4242", "rq-a")  # fmt: skip
    assert (queued.status, queued.worker, queued.rq_job_id, queued.queue) == (
        "Queued", "", "rq-b", "builds")  # fmt: skip
    assert {f.name for f in apps.get_model("builds", "Build")._meta.fields}.isdisjoint(
        {"worker", "job_id", "heartbeat_at"}
    )

    apps = migrate(BEFORE)  # and back: the builds get their claim fields again
    Build = apps.get_model("builds", "Build")
    assert Build.objects.get(pk=working.pk).worker == "host-a:4242"
    assert Build.objects.get(pk=waiting.pk).job_id == "rq-b"
    assert not apps.get_model("jobs", "Operation").objects.exists()  # handed back, not doubled
