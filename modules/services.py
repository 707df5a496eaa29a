"""Where the ORM meets manifests: saving modules and their manifest history."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from modules.limits import manifest_limits
from modules.models import ManifestRevision, Module, sha256_text
from ruddervirt.fetch_settings import portal_fetch_policy
from ruddervirt.manifest import Problem, ValidationResult, validate


class ManifestRejected(Exception):
    """The manifest has errors; nothing was saved."""

    def __init__(self, result: ValidationResult) -> None:
        super().__init__(f"manifest has {len(result.errors)} error(s)")
        self.result = result


class ModuleNameTaken(Exception):
    pass


@dataclass(frozen=True)
class SaveOutcome:
    module: Module
    revision: ManifestRevision
    created_revision: bool
    warnings: list[Problem]


ManifestCheck = Callable[[str, ValidationResult, Any], ValidationResult]
"""A check only the portal can make: (text, result of validating it, user) -> the result
with its problems added (and its manifest dropped when one is an error)."""

_checks: dict[str, ManifestCheck] = {}
# Checks a saved manifest must always pass (registered by builds' AppConfig.ready): without
# the buildRef check a manifest could name another instructor's module unnoticed.
REQUIRED_CHECKS = ("buildRef",)


def register_check(name: str, check: ManifestCheck) -> None:
    """Run `check` in every validate_for from now on (a name registered again is replaced).
    The apps above this one register theirs in their AppConfig.ready: builds the buildRef
    check (builds.refs), which must know module versions, a thing this app does not."""
    _checks[name] = check


def validate_for(text: str, *, user) -> ValidationResult:
    """validate(text) held to this host's caps (modules.limits) and fetch policy (every
    URL, ruddervirt.fetch_settings), plus every registered check: whether each buildRef
    names a module version `user` may use (builds.refs)."""
    missing = [name for name in REQUIRED_CHECKS if name not in _checks]
    if missing:
        raise RuntimeError(
            f"manifest check(s) {', '.join(missing)} not registered: is builds set up?"
        )
    result = validate(text, limits=manifest_limits(), fetch_policy=portal_fetch_policy())
    for check in _checks.values():
        result = check(text, result, user)
    return result


def save_manifest(*, module: Module, text: str, user) -> SaveOutcome:
    """Validate `text` and record it as the module's newest revision.

    Saving the same text as the newest revision again records nothing new, so the
    history lists real changes only. Raises ManifestRejected when the text is invalid,
    a buildRef naming a module version `user` may not use included (validate_for).
    """
    result = validate_for(text, user=user)
    if not result.valid:
        raise ManifestRejected(result)
    digest = sha256_text(text)
    with transaction.atomic():
        latest = module.revisions.select_for_update().order_by("-number").first()
        if latest is not None and latest.sha256 == digest:
            return SaveOutcome(module, latest, False, result.warnings)
        number = (module.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
        revision = ManifestRevision.objects.create(
            module=module, number=number, text=text, sha256=digest, created_by=user
        )
        module.save(update_fields=["updated_at"])
    return SaveOutcome(module, revision, True, result.warnings)


def create_module(*, name: str, description: str, text: str, user) -> SaveOutcome:
    """Create a module with its first manifest revision, atomically."""
    result = validate_for(text, user=user)
    if not result.valid:
        raise ManifestRejected(result)
    try:
        with transaction.atomic():
            module = Module.objects.create(name=name, description=description, owner=user)
            return save_manifest(module=module, text=text, user=user)
    except IntegrityError as exc:
        raise ModuleNameTaken(name) from exc


def modules_visible_to(user):
    """Administrators see every module; instructors see the ones they own."""
    qs = Module.objects.select_related("owner")
    return qs if user.is_superuser else qs.filter(owner=user)


def can_manage(user, module: Module) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or module.owner_id == user.pk))
