"""Builds: what views and management commands ask for (submit, cancel, continue, read).

A build is decided and queued here, as an operation of kind "build" (jobs.runner), whose
job is builds.runner.build_job.
"""

from __future__ import annotations

import contextlib
import logging

from django.db import transaction

import jobs.runner as jobs
from accounts.roles import is_admin
from builds import admission, kept, refs, runner
from builds.models import (
    Build,
    BuildStatus,
    BuildStatusChange,
    BuildStep,
    ModuleVersion,
    StepStatus,
    build_plan_fields,
)
from builds.runner import append_log, create_rows
from builds.transitions import InvalidTransition, transition
from modules.lifecycle import record_created
from modules.limits import manifest_limits
from modules.models import ManifestRevision, Module
from modules.services import ModuleNameTaken, can_manage, create_module, save_manifest
from ruddervirt.hypervisor.driver import HypervisorError
from ruddervirt.manifest import ManifestInvalid, parse
from ruddervirt.runtime import engine_config, get_hypervisor

log = logging.getLogger(__name__)


class BuildNotAllowed(Exception):
    """The request makes no sense for this build now (e.g. cancel a finished build)."""


# --- submitting ------------------------------------------------------------------------
def start_build(
    *,
    module: Module,
    user,
    revision: ManifestRevision | None = None,
    queue: bool = True,
    use_cache: bool = True,
    keep_failed_vm_s: int = 0,
    resumed_from: Build | None = None,
) -> Build:
    """Create a build of `revision` (default: the module's newest manifest) and queue it
    for the workers once the transaction commits. With queue=False the caller runs it
    (`manage.py build --wait` on a host without workers). BuildNotAllowed, with the path
    and line, when a buildRef names a module version `user` may not use (builds.refs),
    when the text is over this host's caps, and when the build may not start now
    (builds.admission: the user's concurrent builds, the host's memory and disk).
    `keep_failed_vm_s`: keep the VM that fails running that long (builds.kept; at most
    RUDDERVIRT_FAILED_VM_KEEP_MAX_S); `resumed_from`: the build this one resumes
    (resume_build)."""
    revision = revision or module.latest_revision
    if revision is None:
        raise BuildNotAllowed(f"module {module.name} has no manifest yet")
    try:
        keep_failed_vm_s = kept.keep_seconds(keep_failed_vm_s)
    except kept.KeepRefused as exc:
        raise BuildNotAllowed(str(exc)) from None
    try:
        manifest = parse(revision.text, limits=manifest_limits())
    except ManifestInvalid as exc:
        raise BuildNotAllowed(f"{revision} is not valid on this host: {exc.problems[0]}") from None
    refused = refs.refused_refs(manifest, user, revision.text)
    if refused:
        raise BuildNotAllowed("; ".join(str(p) for p in refused))
    with transaction.atomic():
        reason = admission.refusal(manifest, user=user)
        if reason:
            raise BuildNotAllowed(reason)
        build = Build.objects.create(
            module=module,
            revision=revision,
            manifest_text=revision.text,
            manifest_sha256=revision.sha256,
            requested_by=user,
            use_cache=use_cache,
            keep_failed_vm_s=keep_failed_vm_s,
            resumed_from=resumed_from,
            **build_plan_fields(manifest),
        )
        create_rows(build, manifest)
        record_created(BuildStatusChange, build, by=user, why=f"requested by {user}")
        jobs.submit(runner.KIND, build, by=user, queue=queue)
    return build


def submit_manifest(
    *,
    text: str,
    module_name: str,
    user,
    queue: bool = True,
    use_cache: bool = True,
    keep_failed_vm_s: int = 0,
) -> Build:
    """Save `text` as the module's newest manifest (creating the module) and build it
    (``use_cache=False``: every step runs, the step cache is neither read nor written).
    Another instructor's module is refused as a name that is taken (ModuleNameTaken)."""
    module = Module.objects.filter(name=module_name).first()
    if module is not None and not can_manage(user, module):
        raise ModuleNameTaken(module_name)
    if module is None:
        outcome = create_module(name=module_name, description="", text=text, user=user)
    else:
        outcome = save_manifest(module=module, text=text, user=user)
    return start_build(
        module=outcome.module,
        user=user,
        revision=outcome.revision,
        queue=queue,
        use_cache=use_cache,
        keep_failed_vm_s=keep_failed_vm_s,
    )


# --- resuming, and a failed VM kept for inspection ----------------------------------------
RESUMABLE = frozenset({BuildStatus.FAILED, BuildStatus.CANCELLED})


def may_resume(user, build: Build) -> bool:
    """Whether `user` may resume `build`: the instructor who started it, or an admin."""
    return bool(user.is_authenticated and (user.pk == build.requested_by_id or is_admin(user)))


def resume_build(
    build: Build,
    *,
    user,
    text: str | None = None,
    queue: bool = True,
    keep_failed_vm_s: int = 0,
    hv=None,
) -> Build:
    """A new build that continues the failed or cancelled `build`: each VM starts from the
    last checkpoint of its good steps that still matches the manifest (the step cache in
    the failed build's scope: Build.cache_scope). `text`: an edited manifest, saved as the
    module's newest revision first (ManifestRejected when it is invalid); else the manifest
    as the failed build had it. A VM the failed build kept running is removed first (its
    memory is free for the resume). BuildNotAllowed for anyone but the build's instructor
    or an administrator, and for a build that did not fail or was not cancelled."""
    if not may_resume(user, build):
        raise BuildNotAllowed(
            f"only {build.requested_by}, who started build {build.pk}, or an administrator "
            "may resume it"
        )
    if build.status not in RESUMABLE:
        still = " (it has not finished: wait for it, or cancel it)" if not build.is_terminal else ""
        raise BuildNotAllowed(
            f"build {build.pk} is {build.status}: only a failed or cancelled build can be "
            f"resumed{still}"
        )
    revision = build.revision
    if text is not None and text != build.manifest_text:
        revision = save_manifest(module=build.module, text=text, user=user).revision
    elif revision is None:  # a build made by hand: its text becomes a revision
        revision = save_manifest(module=build.module, text=build.manifest_text, user=user).revision
    if build.kept_vm_until is not None:
        _remove_kept(build, hv, why=f"build {build.pk} is resumed")
    resumed = start_build(
        module=build.module,
        user=user,
        revision=revision,
        queue=queue,
        keep_failed_vm_s=keep_failed_vm_s,
        resumed_from=build,
    )
    append_log(build, f"resumed by build #{resumed.pk} (requested by {user})")
    append_log(resumed, _resume_note(build, resumed))
    return resumed


def _resume_note(failed: Build, resumed: Build) -> str:
    edited = (
        "an edited manifest"
        if resumed.manifest_sha256 != failed.manifest_sha256
        else ("the manifest as submitted")
    )
    note = f"resume of build #{failed.pk} ({failed.status}) with {edited}"
    if not engine_config().step_cache:
        return note + ": the step cache is off on this host, so every step runs again"
    if not failed.use_cache:
        return note + (
            f": build #{failed.pk} ran with the cache off and kept no checkpoints, so every "
            "step runs again"
        )
    return note


def clean_up_kept_vm(build: Build, *, user, hv=None) -> list[str]:
    """Clean up now: remove the VM `build` keeps for inspection (and the build's networks).
    BuildNotAllowed when nothing is kept."""
    if build.kept_vm_until is None:
        raise BuildNotAllowed(f"build {build.pk} keeps no VM running")
    return _remove_kept(build, hv, why=f"cleaned up by {user}")


def _remove_kept(build: Build, hv, *, why: str) -> list[str]:
    """Remove the build's kept VM now; BuildNotAllowed (with libvirt's reason) when the
    hypervisor refuses (the sweep tries again when its time is over)."""
    try:
        return kept.remove_kept_vm(build, hv or get_hypervisor(), why=why)
    except HypervisorError as exc:
        raise BuildNotAllowed(f"could not remove the kept VM of build {build.pk}: {exc}") from exc


def request_cancel(build: Build, *, user) -> Build:
    """Ask the worker to stop. A build nobody has started yet is cancelled at once."""
    if build.is_terminal:
        raise BuildNotAllowed(f"build {build.pk} has already finished ({build.status})")
    Build.objects.filter(pk=build.pk).update(cancel_requested=True)
    build.refresh_from_db()
    if build.status == BuildStatus.PENDING and build.attempt == 1 and not build.started_at:
        # The worker may have picked it up meanwhile; it will see cancel_requested.
        with contextlib.suppress(InvalidTransition):
            transition(
                build,
                BuildStatus.CANCELLED,
                by=user,
                error=f"cancelled by {user} before it started",
            )
    append_log(build, f"cancel requested by {user}")
    return build


def decide_handbuild(
    build: Build, *, vm_name: str | None, user, decision: str, reason: str = ""
) -> BuildStep:
    """Continue (or fail) the handbuild step a VM of `build` is waiting at."""
    if decision not in {"continue", "fail"}:
        raise ValueError(decision)
    waiting = BuildStep.objects.filter(vm__build=build, status=StepStatus.WAITING_FOR_USER)
    if vm_name:
        waiting = waiting.filter(vm__name=vm_name)
    steps = list(waiting.select_related("vm"))
    if not steps:
        raise BuildNotAllowed("no VM of this build is waiting for a person")
    if len(steps) > 1:
        names = ", ".join(s.vm.name for s in steps)
        raise BuildNotAllowed(f"several VMs are waiting ({names}): say which")
    step = steps[0]
    text = reason.strip() or ("" if decision == "continue" else f"failed by {user}")
    BuildStep.objects.filter(pk=step.pk, user_decision="").update(
        user_decision=decision, user_reason=text
    )
    append_log(build, f"{decision} pressed by {user}{': ' + text if text else ''}", vm=step.vm.name)
    return step


# --- reading ---------------------------------------------------------------------------
def build_summary(build: Build, *, detail: bool = False) -> dict:
    version = ModuleVersion.objects.filter(build=build).values_list("number", flat=True).first()
    data = {
        "build": build.pk,
        "status": build.status,
        "module": build.module.name,
        "version": version,
        "duration_s": build.duration_s,
    }
    if build.error:
        data["error"] = build.error
    if build.resumed_from_id is not None:
        data["resumed_from"] = build.resumed_from_id
    if build.kept_vm_until is not None:
        data["kept_vm"] = {
            "vms": list(build.vms.filter(kept=True).values_list("name", flat=True)),
            "until": build.kept_vm_until.isoformat(),
            "seconds_left": build.kept_vm_seconds_left,
        }
    if detail:
        data["attempt"] = build.attempt
        data["resumes"] = list(build.resumes.order_by("pk").values_list("pk", flat=True))
        data["vms"] = [
            {
                "name": vm.name,
                "phase": vm.phase,
                "message": vm.message,
                "steps": [
                    {
                        "name": s.name,
                        "type": s.type,
                        "status": s.status,
                        "exit_code": s.exit_code,
                        "duration_s": s.duration_s,
                        "message": s.message,
                        **(
                            {"reused_from": s.reused_from, "saved_s": s.saved_s}
                            if s.status == StepStatus.REUSED
                            else {}
                        ),
                    }
                    for s in vm.steps.all()
                ],
            }
            for vm in build.vms.prefetch_related("steps")
        ]
        data["cache_starts"] = build.cache_starts
    return data
