"""Builds, their per-VM progress, provisioner steps and log lines, and the module
versions a successful build produces."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils.functional import cached_property

from modules.lifecycle import StatusChange
from modules.models import ManifestRevision, Module
from ruddervirt import capacity
from ruddervirt.engine import phases
from ruddervirt.manifest import Manifest, defaults
from ruddervirt.spec import SpecError, VersionSpec, load_spec


class BuildStatus(models.TextChoices):
    PENDING = "Pending"
    NETWORKING = "Networking"
    BUILDING = "Building"
    CAPTURING = "CapturingDisks"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL = frozenset({BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED})
ACTIVE = frozenset(set(BuildStatus) - TERMINAL)


# A VM's phase and a step's state are the engine's words (progress from the reporter,
# written as reported); the build's status above is the portal's (builds.transitions).
VMPhase = phases.VMPhase
StepStatus = phases.StepState


def build_plan_fields(manifest: Manifest) -> dict[str, float | int]:
    """The Build fields that say what a build of `manifest` asks of the host (see Build)."""
    memory, disk = capacity.build_demand(manifest)
    return {
        "timeout_s": manifest.timeout,
        "retries": manifest.retries,
        "memory_bytes": memory,
        "disk_bytes": disk,
    }


class Build(models.Model):
    module = models.ForeignKey(Module, on_delete=models.CASCADE, related_name="builds")
    revision = models.ForeignKey(
        ManifestRevision, on_delete=models.PROTECT, related_name="builds", null=True
    )
    manifest_text = models.TextField()
    manifest_sha256 = models.CharField(max_length=64)
    status = models.CharField(
        max_length=20, choices=BuildStatus.choices, default=BuildStatus.PENDING, db_index=True
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="builds"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    cancel_requested = models.BooleanField(default=False)
    # A failed build's disks stay on the host until then, for inspection.
    keep_disks_until = models.DateTimeField(null=True, blank=True)
    disks_removed = models.BooleanField(default=False)
    # What the build asks of the host, from its manifest when it was submitted (the manifest
    # defaults when a build is made by hand): its timeout and retries, and its VMs' memory
    # (buildOverrides applied) and disks at their full size. Read by the job queue and the
    # capacity checks, so that nothing but the build itself reads its manifest again.
    timeout_s = models.FloatField(default=defaults.TIMEOUT_SECONDS)
    retries = models.PositiveIntegerField(default=defaults.RETRIES)
    memory_bytes = models.BigIntegerField(default=0)
    disk_bytes = models.BigIntegerField(default=0)
    # The step cache (docs/builds.md#step-cache): False builds every step again.
    use_cache = models.BooleanField(default=True)
    # A resume (docs/builds.md#resuming-a-failed-build): the failed or cancelled build this
    # one continues, whose checkpoints it starts from.
    resumed_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="resumes"
    )
    # Keep the VM that failed running this long for inspection (0: removed at once), and,
    # once it is kept, until when (the builds' sweep removes it then; BuildVM.kept says
    # which VM).
    keep_failed_vm_s = models.PositiveIntegerField(default=0)
    kept_vm_until = models.DateTimeField(null=True, blank=True)
    # What the kept VMs hold of the host's memory (their build-time memory), counted by
    # builds.admission while they are kept.
    kept_memory_bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"build {self.pk} of {self.module.name}"

    def get_absolute_url(self) -> str:
        return reverse("builds:detail", args=[self.pk])

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def cache_scope(self) -> str:
        """Whose checkpoints the build reuses and adds to (the step cache's scope): the
        instructor who asked for it, or for a resume that of the build it resumes (an
        administrator resuming an instructor's build starts from the instructor's steps)."""
        if self.resumed_from_id is not None and self.resumed_from is not None:
            return self.resumed_from.cache_scope
        return f"user-{self.requested_by_id}"

    @property
    def has_kept_vm(self) -> bool:
        """Whether a VM of this failed build is kept running for inspection now."""
        from django.utils import timezone

        return self.kept_vm_until is not None and self.kept_vm_until > timezone.now()

    @property
    def kept_vm_seconds_left(self) -> int:
        from django.utils import timezone

        if self.kept_vm_until is None:
            return 0
        return max(0, int((self.kept_vm_until - timezone.now()).total_seconds()))

    @property
    def cache_starts(self) -> dict[str, dict[str, object]]:
        """The build's provenance from the step cache: per VM that reused steps, the
        checkpoint it started from (its key, the build that made it, how many steps)."""
        starts: dict[str, dict[str, object]] = {}
        reused = BuildStep.objects.filter(vm__build=self, status=StepStatus.REUSED)
        for step in reused.select_related("vm").order_by("vm__index", "index"):
            starts[step.vm.name] = {
                "key": step.cache_key,
                "build": step.reused_from,
                "steps": step.index + 1,
            }
        return starts

    @property
    def duration_s(self) -> float | None:
        if not self.started_at:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 3)


class BuildStatusChange(StatusChange):
    """One move of a build's status (builds.transitions writes it with the move)."""

    subject = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="history")

    class Meta(StatusChange.Meta):
        pass


class BuildVM(models.Model):
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="vms")
    name = models.CharField(max_length=63)
    index = models.PositiveIntegerField()
    phase = models.CharField(
        max_length=20, choices=phases.choices(VMPhase), default=VMPhase.PENDING
    )
    message = models.TextField(blank=True)
    domain_name = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The VM failed the build and is kept running for inspection (until Build.kept_vm_until).
    kept = models.BooleanField(default=False)

    class Meta:
        ordering = ["build", "index"]
        constraints = [models.UniqueConstraint(fields=["build", "name"], name="unique_build_vm")]

    def __str__(self) -> str:
        return f"{self.build_id}/{self.name}"


class BuildStep(models.Model):
    vm = models.ForeignKey(BuildVM, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=30)
    status = models.CharField(
        max_length=20, choices=phases.choices(StepStatus), default=StepStatus.PENDING
    )
    started_at = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    # handbuild: what the person is asked to do, and the step's own timeout (None: the
    # build timeout only), from the manifest when the rows are made.
    instructions = models.TextField(blank=True)
    timeout_s = models.FloatField(null=True, blank=True)
    # handbuild: set by Continue / Fail from the page or the command.
    user_decision = models.CharField(max_length=10, blank=True)
    user_reason = models.TextField(blank=True)
    # The step cache: the step's key, and for a Reused step the build whose checkpoint it
    # came from and how long the step took there (the time this build saved).
    cache_key = models.CharField(max_length=64, blank=True)
    reused_from = models.IntegerField(null=True, blank=True)
    saved_s = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["vm", "index"]
        constraints = [models.UniqueConstraint(fields=["vm", "index"], name="unique_vm_step")]

    def __str__(self) -> str:
        return f"{self.vm.name} step {self.index + 1} ({self.name})"


class BuildLogLine(models.Model):
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    vm = models.CharField(max_length=63, blank=True)
    stream = models.CharField(max_length=10, default="info")  # info, stdout, stderr, error
    text = models.TextField()

    class Meta:
        ordering = ["build", "seq"]
        constraints = [models.UniqueConstraint(fields=["build", "seq"], name="unique_log_seq")]

    def __str__(self) -> str:
        return f"build {self.build_id} #{self.seq}: {self.text[:60]}"


class ModuleVersion(models.Model):
    """An immutable result of a successful build: halted template VMs and their disks."""

    module = models.ForeignKey(Module, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    build = models.OneToOneField(Build, on_delete=models.PROTECT, related_name="version")
    manifest_text = models.TextField()
    manifest_sha256 = models.CharField(max_length=64)
    storage_path = models.CharField(max_length=500)
    # The version's record (ruddervirt.spec.VersionSpec as JSON), written once at capture:
    # what templates, clones, capacity, consoles and the topology picture read. Null only
    # for a version an older RudderVirt made that the migration could not convert.
    spec = models.JSONField(null=True)
    # The students' instructions (Markdown): the module's briefing when the version was
    # captured, edited per version afterwards by its instructor (modules.briefing renders it).
    briefing = models.TextField(blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["module", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["module", "number"], name="unique_module_version")
        ]

    def __str__(self) -> str:
        return f"{self.module.name}@{self.number}"

    @cached_property
    def version_spec(self) -> VersionSpec:
        """The typed record; SpecError (with the version's name) when there is none or it
        cannot be read."""
        if self.spec is None:
            raise SpecError(
                f"{self} has no version record (an older RudderVirt made it and the "
                f"migration could not convert it): build the module again"
            )
        try:
            return load_spec(self.spec)
        except SpecError as exc:
            raise SpecError(f"{self}: {exc}") from exc


class TemplateVM(models.Model):
    version = models.ForeignKey(ModuleVersion, on_delete=models.CASCADE, related_name="vms")
    name = models.CharField(max_length=63)
    index = models.PositiveIntegerField()
    # The halted template domain; what the VM is lives in ModuleVersion.spec.
    domain_name = models.CharField(max_length=200)

    class Meta:
        ordering = ["version", "index"]
        constraints = [
            models.UniqueConstraint(fields=["version", "name"], name="unique_template_vm")
        ]

    def __str__(self) -> str:
        return f"{self.version} {self.name}"
