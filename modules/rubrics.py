"""Where the ORM meets rubrics: validating one for a module and keeping its history."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Max

from modules.models import Module, RubricRevision, sha256_text
from ruddervirt import rubric as rubrics
from ruddervirt.manifest import NO_LIMITS, validate
from ruddervirt.manifest.problems import Problem


class RubricRejected(Exception):
    """The rubric has errors; nothing was saved."""

    def __init__(self, result: rubrics.RubricResult) -> None:
        super().__init__(f"rubric has {len(result.errors)} error(s)")
        self.result = result


@dataclass(frozen=True)
class RubricSaved:
    revision: RubricRevision
    created: bool
    warnings: list[Problem]


def module_vms(module: Module) -> list[str] | None:
    """The VM names of the module's newest manifest (None when it has none to read)."""
    latest = module.latest_revision
    if latest is None:
        return None
    manifest = validate(latest.text, limits=NO_LIMITS).manifest
    return None if manifest is None else [vm.name for vm in manifest.vms]


def validate_rubric(module: Module, text: str) -> rubrics.RubricResult:
    """The rubric's problems; a check naming a VM the module's manifest lacks is a warning."""
    return rubrics.validate(text, vms=module_vms(module))


def save_rubric(*, module: Module, text: str, user) -> RubricSaved:
    """Validate `text` and record it as the module's newest rubric revision (the same text
    as the newest again records nothing). Raises RubricRejected."""
    result = validate_rubric(module, text)
    if not result.valid:
        raise RubricRejected(result)
    digest = sha256_text(text)
    with transaction.atomic():
        Module.objects.select_for_update().filter(pk=module.pk).first()
        latest = module.rubric
        if latest is not None and latest.sha256 == digest:
            return RubricSaved(latest, False, result.warnings)
        number = (module.rubric_revisions.aggregate(n=Max("number"))["n"] or 0) + 1
        revision = RubricRevision.objects.create(
            module=module, number=number, text=text, sha256=digest, created_by=user
        )
    return RubricSaved(revision, True, result.warnings)


def rubric_of(revision: RubricRevision) -> rubrics.Rubric:
    """The typed rubric of a saved revision (it was valid when saved)."""
    return rubrics.parse(revision.text)
