"""A build's run moves to jobs.Operation: the build's own claim fields (worker, heartbeat,
RQ job id) go. A build under way when this runs gets its operation first, Running with its
worker (the reconcile settles it if that worker is gone) or Queued with its RQ job (queued
again by the reconcile if that job cannot run any more)."""

from django.db import migrations

ACTIVE = ("Pending", "Networking", "Building", "CapturingDisks")


def runs_to_operations(apps, schema_editor):
    Build = apps.get_model("builds", "Build")
    Operation = apps.get_model("jobs", "Operation")
    ContentType = apps.get_model("contenttypes", "ContentType")
    kind, _ = ContentType.objects.get_or_create(app_label="builds", model="build")
    for build in Build.objects.filter(status__in=ACTIVE):
        if Operation.objects.filter(
            target_type=kind, target_id=build.pk, status__in=("Queued", "Running")
        ).exists():
            continue
        running = bool(build.worker)
        Operation.objects.create(
            kind="build",
            target_type=kind,
            target_id=build.pk,
            status="Running" if running else "Queued",
            queue="builds",
            rq_job_id=build.job_id,
            worker=build.worker,
            requested_by_id=build.requested_by_id,
            created_at=build.created_at,
            started_at=build.started_at if running else None,
            heartbeat_at=build.heartbeat_at,
        )


def operations_to_runs(apps, schema_editor):
    Build = apps.get_model("builds", "Build")
    Operation = apps.get_model("jobs", "Operation")
    open_runs = Operation.objects.filter(kind="build", status__in=("Queued", "Running"))
    for op in open_runs:
        Build.objects.filter(pk=op.target_id).update(
            worker=op.worker, heartbeat_at=op.heartbeat_at, job_id=op.rq_job_id
        )
    open_runs.delete()  # the build holds its run again


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0004_buildstatuschange"),
        ("jobs", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(runs_to_operations, operations_to_runs),
        migrations.RemoveField(model_name="build", name="heartbeat_at"),
        migrations.RemoveField(model_name="build", name="job_id"),
        migrations.RemoveField(model_name="build", name="worker"),
    ]
