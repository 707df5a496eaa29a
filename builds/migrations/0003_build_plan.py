"""What a build asks of the host, kept on the Build and BuildStep rows when it is submitted
(timeout, retries, memory, disks; each handbuild step's instructions and timeout), so that
job timeouts, capacity checks and the handbuild console read rows, not manifest text.

Existing builds get theirs from their manifest text, read one last time (leniently, as the
version-record migration does); one that cannot be read keeps the defaults.
"""

import sys

from django.db import migrations, models


def _manifest(text: str):
    from ruddervirt.manifest import NO_LIMITS, parse
    from ruddervirt.manifest.convert import to_manifest
    from ruddervirt.manifest.loader import load

    try:
        return parse(text, limits=NO_LIMITS)
    except Exception:  # a stricter validator than the one that accepted it
        return to_manifest(load(text).data)


def build_plan_fields(manifest) -> dict:
    """What builds.models.build_plan_fields gave when this migration was written (a copy:
    a migration must not change when the code does)."""
    built = manifest.for_build()
    return {
        "timeout_s": manifest.timeout,
        "retries": manifest.retries,
        "memory_bytes": sum(vm.resources.memory for vm in built.vms),
        "disk_bytes": sum(d.size for vm in built.vms for d in vm.disks),
    }


def fill(apps, schema_editor) -> None:
    Build = apps.get_model("builds", "Build")
    BuildStep = apps.get_model("builds", "BuildStep")
    for build in Build.objects.all().iterator():
        try:
            manifest = _manifest(build.manifest_text)
            fields = build_plan_fields(manifest)
        except Exception as exc:
            sys.stderr.write(f"build {build.pk}: manifest unreadable, keeps the defaults: {exc}\n")
            continue
        Build.objects.filter(pk=build.pk).update(**fields)
        for step in BuildStep.objects.filter(vm__build=build).select_related("vm"):
            try:
                spec = manifest.vm(step.vm.name).provisioners[step.index]
            except (KeyError, IndexError, StopIteration):
                continue
            BuildStep.objects.filter(pk=step.pk).update(
                instructions=getattr(spec, "instructions", ""), timeout_s=spec.step_timeout
            )


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0002_version_spec"),
    ]

    operations = [
        migrations.AddField(
            model_name="build",
            name="disk_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="build",
            name="memory_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="build",
            name="retries",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="build",
            name="timeout_s",
            field=models.FloatField(default=1800.0),
        ),
        migrations.AddField(
            model_name="buildstep",
            name="instructions",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="buildstep",
            name="timeout_s",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
