"""One row per run of a job: what runs, on what, where, and how it ended.

Builds and clone actions are both operations (NetBox's Job is the model): the apps register
their kinds (jobs.registry), services queue an Operation for a target row, and one runner
(jobs.runner) claims it, beats its heartbeat, runs the kind's handler and records the end.
One reconcile (jobs.reconcile) settles the runs whose worker died.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q
from django.utils import timezone


class OperationStatus(models.TextChoices):
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"  # the target had moved on when the run began (cancelled, deleted)
    INTERRUPTED = "Interrupted"  # its worker died or stopped beating


S = OperationStatus
OPEN = frozenset({S.QUEUED, S.RUNNING})
ENDED = frozenset(set(S) - OPEN)
RUNS_SHOWN = 50  # the newest runs a build or clone page lists


class OperationQuerySet(models.QuerySet):
    def for_target(self, target: models.Model) -> OperationQuerySet:
        return self.filter(
            target_type=ContentType.objects.get_for_model(target), target_id=target.pk
        )

    def for_model(self, model: type[models.Model]) -> OperationQuerySet:
        return self.filter(target_type=ContentType.objects.get_for_model(model))

    def running(self) -> OperationQuerySet:
        return self.filter(status=S.RUNNING)


class Operation(models.Model):
    """A run of a job of `kind` on `target` (a Build, a Clone)."""

    kind = models.CharField(max_length=40, db_index=True)
    target_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    target_id = models.PositiveBigIntegerField()
    target = GenericForeignKey("target_type", "target_id")
    args = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=S.choices, default=S.QUEUED, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    queue = models.CharField(max_length=40, blank=True)
    rq_job_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)  # "host:pid" (ruddervirt.runtime)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=40, blank=True)  # the target's status at the end
    error = models.TextField(blank=True)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["target_type", "target_id"])]
        constraints = [
            # The claim: two processes never work on one target at the same time.
            models.UniqueConstraint(
                fields=["target_type", "target_id"],
                condition=Q(status="Running"),
                name="one_running_operation_per_target",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def duration_s(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 3)

    @property
    def waited_s(self) -> float | None:
        """Seconds between queueing and the start (how long it waited for a worker)."""
        if not self.started_at:
            return None
        return round((self.started_at - self.created_at).total_seconds(), 3)
