"""Modules and the manifest texts they were saved with."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse

dns_label = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "Use lowercase letters, digits and '-', starting and ending with a letter or digit.",
)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Module(models.Model):
    """A named group of VMs, built from a manifest and cloned as one."""

    name = models.CharField(max_length=63, unique=True, validators=[dns_label])
    description = models.TextField(blank=True)
    # The students' instructions (Markdown), as the instructor edits them now; each version
    # gets a copy when it is captured (ModuleVersion.briefing), editable there afterwards.
    briefing = models.TextField(blank=True, default="", db_default="")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="modules"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("modules:detail", args=[self.name])

    @property
    def latest_revision(self) -> ManifestRevision | None:
        return self.revisions.order_by("-number").first()

    @property
    def rubric(self) -> RubricRevision | None:
        """The rubric in force: the newest revision (None: the module has no rubric)."""
        return self.rubric_revisions.order_by("-number").first()


class TextRevision(models.Model):
    """A saved text of a module's (its manifest, its rubric): numbered, with its sha256 and
    who saved it. Never edited; the same text saved again makes no new revision."""

    number = models.PositiveIntegerField()
    text = models.TextField()
    sha256 = models.CharField(max_length=64, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["module", "-number"]


class ManifestRevision(TextRevision):
    """One saved manifest text of a module. Never edited, never deleted with history intact."""

    module = models.ForeignKey(Module, on_delete=models.CASCADE, related_name="revisions")

    class Meta(TextRevision.Meta):
        constraints = [
            models.UniqueConstraint(fields=["module", "number"], name="unique_revision_number")
        ]

    def __str__(self) -> str:
        return f"{self.module.name} r{self.number}"


class RubricRevision(TextRevision):
    """One saved rubric text of a module (ruddervirt.rubric), kept like manifest revisions;
    grading runs name the revision they ran."""

    module = models.ForeignKey(Module, on_delete=models.CASCADE, related_name="rubric_revisions")

    class Meta(TextRevision.Meta):
        constraints = [
            models.UniqueConstraint(fields=["module", "number"], name="unique_rubric_number")
        ]

    def __str__(self) -> str:
        return f"{self.module.name} rubric r{self.number}"
