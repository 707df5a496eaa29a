"""Classes of students, and the clones of module versions launched for them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from builds.models import ModuleVersion
from modules.lifecycle import StatusChange


class Class(models.Model):
    """A group of students an instructor launches module versions for."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_classes"
    )
    # Co-instructors: they see the dashboard and act on every clone, like the owner.
    instructors = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="taught_classes"
    )
    students = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="ClassMembership", related_name="classes"
    )
    # Made by `launch_class` without --class: one launch, no roster of its own.
    adhoc = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "classes"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("clones:class", args=[self.pk])


class ClassMembership(models.Model):
    klass = models.ForeignKey(Class, on_delete=models.CASCADE, related_name="memberships")
    student = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["klass", "student__username"]
        constraints = [
            models.UniqueConstraint(fields=["klass", "student"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.student} in {self.klass}"


class AccountSetup(models.Model):
    """How a student made by bulk add gets in: an invitation link (`token_digest`) or a
    one-time password that must be replaced at the first login (`must_set_password`)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account_setup"
    )
    token_digest = models.CharField(max_length=64, blank=True, db_index=True)
    must_set_password = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"account setup of {self.user}"


class CloneStatus(models.TextChoices):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"
    DELETING = "Deleting"


# A clone in one of these is being worked on by a job; the others are at rest.
BUSY = frozenset(
    {
        CloneStatus.PENDING,
        CloneStatus.PROVISIONING,
        CloneStatus.STARTING,
        CloneStatus.STOPPING,
        CloneStatus.DELETING,
    }
)
AT_REST = frozenset(set(CloneStatus) - BUSY)


class StartMode(models.TextChoices):
    """How a clone's VMs come up: booted from the template disks, or resumed from the
    version's warm image (clones.warm)."""

    COLD = "cold"
    WARM = "warm"


class WarmStatus(models.TextChoices):
    MAKING = "Making"
    READY = "Ready"
    FAILED = "Failed"


class WarmImage(models.Model):
    """A version booted once and saved (ruddervirt.engine.warm): its frozen disks and saved
    states, under ``<storage>/warm/<id>/``, from which warm clones resume. One per version;
    kept until the version goes or its instructor drops it."""

    version = models.OneToOneField(
        ModuleVersion, on_delete=models.CASCADE, related_name="warm_image"
    )
    status = models.CharField(
        max_length=10, choices=WarmStatus.choices, default=WarmStatus.MAKING, db_index=True
    )
    error = models.TextField(blank=True)
    size_bytes = models.BigIntegerField(default=0)
    made_in_s = models.FloatField(null=True, blank=True)  # boot, wait until ready, save
    ready_s = models.JSONField(default=dict)  # VM name -> seconds its guest took to be ready
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    made_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"warm image of {self.version}"

    @property
    def key(self) -> str:
        """Part of the names of the instance's domains and networks while it is made."""
        return f"w{self.pk}"

    @property
    def is_ready(self) -> bool:
        return self.status == WarmStatus.READY


class Clone(models.Model):
    """One student's running copy of a module version (all of its VMs)."""

    klass = models.ForeignKey(Class, on_delete=models.PROTECT, related_name="clones")
    student = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="clones"
    )
    # PROTECT: a version's templates cannot be deleted while a clone uses them.
    version = models.ForeignKey(ModuleVersion, on_delete=models.PROTECT, related_name="clones")
    status = models.CharField(
        max_length=20, choices=CloneStatus.choices, default=CloneStatus.PENDING, db_index=True
    )
    error = models.TextField(blank=True)  # why it failed
    # What the student should know: "stopped after 30 min without console input", ...
    note = models.CharField(max_length=300, blank=True)
    full_copy = models.BooleanField(default=False)
    storage_path = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    inactivity_timeout_s = models.PositiveIntegerField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    reprovisions = models.PositiveIntegerField(default=0)
    # Asked for at launch: warm resumes the version's warm image (a cold boot when there is
    # none, or its restore fails); `warm_image` is the image its disks now stand on (its
    # frozen disks back the clone's overlays: the image cannot be dropped under it).
    start_mode = models.CharField(max_length=4, choices=StartMode.choices, default=StartMode.COLD)
    warm_image = models.ForeignKey(
        WarmImage, on_delete=models.PROTECT, null=True, blank=True, related_name="clones"
    )

    class Meta:
        ordering = ["klass", "student__username", "pk"]

    def __str__(self) -> str:
        return f"clone {self.pk} of {self.version} for {self.student}"

    @property
    def key(self) -> str:
        return f"c{self.pk}"

    @property
    def is_busy(self) -> bool:
        return self.status in BUSY

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class CloneStatusChange(StatusChange):
    """One move of a clone's status (clones.transitions writes it with the move)."""

    subject = models.ForeignKey(Clone, on_delete=models.CASCADE, related_name="history")

    class Meta(StatusChange.Meta):
        pass


class CloneVM(models.Model):
    clone = models.ForeignKey(Clone, on_delete=models.CASCADE, related_name="vms")
    name = models.CharField(max_length=63)
    index = models.PositiveIntegerField()
    domain_name = models.CharField(max_length=200)
    invisible = models.BooleanField(default=False)
    # The loopback port forwarded to the guest's SSH (0: never started).
    mgmt_port = models.PositiveIntegerField(default=0)
    # [{name, subnet, slot, mac, ip, model}], the template's.
    nics = models.JSONField(default=list)
    disks = models.JSONField(default=list)  # paths of the clone's disks
    # What libvirt said last: running, shutoff, absent, ...
    state = models.CharField(max_length=20, blank=True)
    # Readiness (clones.readiness): when the portal last booted the VM, when its guest then
    # answered (agent or SSH banner), how long that took and how. Cleared when it stops.
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    ready_s = models.FloatField(null=True, blank=True)
    ready_via = models.CharField(max_length=10, blank=True)  # "agent" or "ssh"
    # How it came up last: "cold" (booted) or "warm" (restored), and what to know of it
    # (a fallback to a cold boot and why, a guest without agent).
    started_via = models.CharField(max_length=4, blank=True)
    start_note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["clone", "index"]
        constraints = [models.UniqueConstraint(fields=["clone", "name"], name="unique_clone_vm")]

    def __str__(self) -> str:
        return f"{self.clone_id}/{self.name}"

    @property
    def console_url(self) -> str:
        return f"/console/clone/{self.clone_id}/{self.name}/"

    @property
    def is_ready(self) -> bool:
        """Its guest answered since it was last started, and it still runs."""
        return self.ready_at is not None and self.state == "running"


class GradingRun(models.Model):
    """One run of a module's rubric in one clone (clones.grading): which rubric revision,
    who asked, when it ran, and the score. Its checks' results are CheckResult rows; the job
    that ran it is a jobs.Operation of kind "grade" with this row as its target."""

    clone = models.ForeignKey(Clone, on_delete=models.CASCADE, related_name="grading_runs")
    rubric = models.ForeignKey(
        "modules.RubricRevision", on_delete=models.PROTECT, related_name="runs"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    by_student = models.BooleanField(default=False)  # "Check my work"
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    score = models.PositiveIntegerField(default=0)
    max_score = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)  # why the run as a whole did not happen

    class Meta:
        ordering = ["clone", "-created_at", "-pk"]

    def __str__(self) -> str:
        return f"grading run {self.pk} of clone {self.clone_id}"

    @property
    def done(self) -> bool:
        return self.finished_at is not None


class CheckResult(models.Model):
    """One check of a grading run: its name and points (what a student may see), and its
    output and exit status (for instructors only)."""

    run = models.ForeignKey(GradingRun, on_delete=models.CASCADE, related_name="results")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=100)
    vm = models.CharField(max_length=63)
    points = models.PositiveIntegerField()
    passed = models.BooleanField(default=False)
    exit_code = models.IntegerField(null=True, blank=True)
    output = models.TextField(blank=True)  # stdout, then stderr, each cut (rubric caps)
    duration_s = models.FloatField(default=0)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="unique_check_result")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.name}: {'passed' if self.passed else 'failed'}"
