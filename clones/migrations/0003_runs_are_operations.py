"""A clone's job moves to jobs.Operation: the clone's own claim fields (worker, RQ job id)
go. A clone being worked on when this runs gets its operation first, Running with its
worker (the reconcile fails the clone if that worker is gone) or Queued with its RQ job
(queued again by the reconcile if that job cannot run any more). The action is the one
its status says (a reprovision looks like a provision: both make the clone anew)."""

from django.db import migrations

ACTION_OF = {
    "Pending": "provision",
    "Provisioning": "provision",
    "Starting": "start",
    "Stopping": "stop",
    "Deleting": "delete",
}


def jobs_to_operations(apps, schema_editor):
    Clone = apps.get_model("clones", "Clone")
    Operation = apps.get_model("jobs", "Operation")
    ContentType = apps.get_model("contenttypes", "ContentType")
    kind, _ = ContentType.objects.get_or_create(app_label="clones", model="clone")
    for clone in Clone.objects.filter(status__in=ACTION_OF):
        if Operation.objects.filter(
            target_type=kind, target_id=clone.pk, status__in=("Queued", "Running")
        ).exists():
            continue
        running = bool(clone.worker)
        Operation.objects.create(
            kind="clone." + ACTION_OF[clone.status],
            target_type=kind,
            target_id=clone.pk,
            status="Running" if running else "Queued",
            queue="clones",
            rq_job_id=clone.job_id,
            worker=clone.worker,
            created_at=clone.updated_at,
            started_at=clone.updated_at if running else None,
            heartbeat_at=None,
        )


def operations_to_jobs(apps, schema_editor):
    Clone = apps.get_model("clones", "Clone")
    Operation = apps.get_model("jobs", "Operation")
    open_runs = Operation.objects.filter(
        kind__startswith="clone.", status__in=("Queued", "Running")
    )
    for op in open_runs:
        Clone.objects.filter(pk=op.target_id).update(worker=op.worker, job_id=op.rq_job_id)
    open_runs.delete()  # the clone holds its job again


class Migration(migrations.Migration):
    dependencies = [
        ("clones", "0002_clonestatuschange"),
        ("jobs", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(jobs_to_operations, operations_to_jobs),
        migrations.RemoveField(model_name="clone", name="job_id"),
        migrations.RemoveField(model_name="clone", name="worker"),
    ]
