"""Which module versions a user may name: a manifest's `buildRef` and `module@N` arguments.

One rule decides: a user may use the versions of the modules they may manage
(modules.services.can_manage: the owner, and administrators). For such modules every
failure is said precisely (no such version, no such VM, several VMs). For any other module,
existing or not, every failure is the same sentence, UNUSABLE, so that a stranger learns
nothing about which modules, versions or VMs exist.

The same functions run when a manifest is validated or saved (`ref_problems`), when a build
is submitted, and again in the worker before anything boots (ownership may change between).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builds.models import ModuleVersion, TemplateVM
from modules.models import Module
from modules.services import can_manage
from ruddervirt.manifest import Manifest, Problem, Severity, ValidationResult
from ruddervirt.manifest.loader import LoadError, PositionIndex, load
from ruddervirt.manifest.problems import sort_problems

UNUSABLE = "no such module version you can use"


class RefRefused(Exception):
    """The reference names nothing this user may use. str() is safe to show to the user.

    `unusable` is True for the uniform refusal (a module the user may not manage), False
    for the precise errors about the user's own modules."""

    def __init__(self, message: str, *, unusable: bool, field: str = "name") -> None:
        super().__init__(message)
        self.unusable = unusable
        self.field = field  # which key of the buildRef the problem is about


def label(module: str, number: int | None) -> str:
    """A reference as written: `name` or `name@N`."""
    return module if number is None else f"{module}@{number}"


def find_version(user: Any, module_name: str, number: int | None) -> ModuleVersion:
    """Version `number` (None: the newest) of module `module_name`, when `user` may use it.

    Raises RefRefused: the uniform `"<ref>: no such module version you can use"` for a
    module `user` may not manage (or that does not exist), else a precise message."""
    ref = label(module_name, number)
    module = Module.objects.filter(name=module_name).first()
    if module is None or not can_manage(user, module):
        if module is None and getattr(user, "is_superuser", False):
            raise RefRefused(f"{module_name!r}: no such module", unusable=False)
        raise RefRefused(f"{ref}: {UNUSABLE}", unusable=True)
    versions = ModuleVersion.objects.filter(module=module)
    if number is None:
        version = versions.order_by("-number").first()
        if version is None:
            raise RefRefused(f"{ref!r}: the module has no succeeded build yet", unusable=False)
        return version
    version = versions.filter(number=number).first()
    if version is None:
        raise RefRefused(
            f"{ref}: the module has no succeeded build with that version", unusable=False
        )
    return version


def find_template(user: Any, module_name: str, number: int | None, vm: str | None) -> TemplateVM:
    """The template VM a buildRef names: `vm`, or the version's only VM when `vm` is None.
    RefRefused as find_version; the VM is looked up only in a version `user` may use."""
    version = find_version(user, module_name, number)
    templates = list(version.vms.all())
    names = ", ".join(t.name for t in templates)
    if vm:
        chosen = [t for t in templates if t.name == vm]
        if not chosen:
            raise RefRefused(
                f"{version}: no VM {vm!r} (it has {names})", unusable=False, field="vmName"
            )
        return chosen[0]
    if len(templates) != 1:
        raise RefRefused(f"{version} has several VMs ({names}): set vmName", unusable=False)
    return templates[0]


def template_for(user: Any, vm) -> TemplateVM:
    """The template VM behind manifest VM `vm`'s `source.buildRef` (RefRefused)."""
    ref = vm.source.build_ref
    return find_template(user, ref.module, ref.version, ref.vm_name)


@dataclass(frozen=True)
class _Where:
    index: PositionIndex | None

    def problem(self, path: str, message: str, severity: Severity) -> Problem:
        position = self.index.key(path) if self.index is not None else None
        line, column = position if position is not None else (None, None)
        return Problem(path, line, column, message, severity)


def ref_problems(text: str | bytes, manifest: Manifest, user: Any) -> list[Problem]:
    """One problem per buildRef of `manifest` (parsed from `text`) that `user` cannot use
    now, with its path and line: an error for the uniform refusal, a warning for the
    precise problems of the user's own modules (they may be built before this manifest)."""
    refs = [(i, vm) for i, vm in enumerate(manifest.vms) if vm.source.build_ref is not None]
    if not refs:
        return []
    try:
        where = _Where(load(text).index)
    except LoadError:  # cannot happen for a text that validated; no positions then
        where = _Where(None)
    problems = []
    for index, vm in refs:
        try:
            template_for(user, vm)
        except RefRefused as exc:
            path = f"vms[{index}].source.buildRef.{exc.field}"
            severity = Severity.ERROR if exc.unusable else Severity.WARNING
            problems.append(where.problem(path, f"buildRef {exc}", severity))
    return problems


def with_ref_problems(text: str | bytes, result: ValidationResult, user: Any) -> ValidationResult:
    """`result` (of validating `text`) with `user`'s buildRef problems added; the manifest
    is dropped when that adds an error, as for any other error."""
    if result.manifest is None:
        return result
    extra = ref_problems(text, result.manifest, user)
    if not extra:
        return result
    errors = sort_problems([*result.errors, *(p for p in extra if p.severity is Severity.ERROR)])
    warnings = sort_problems(
        [*result.warnings, *(p for p in extra if p.severity is Severity.WARNING)]
    )
    return ValidationResult(
        errors=errors, warnings=warnings, manifest=None if errors else result.manifest
    )


def refused_refs(manifest: Manifest, user: Any, text: str | bytes) -> list[Problem]:
    """The uniform refusals among `manifest`'s buildRefs for `user` (the errors of
    ref_problems): what submitting a build of it must stop at."""
    return [p for p in ref_problems(text, manifest, user) if p.severity is Severity.ERROR]
