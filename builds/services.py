"""Builds: what views and management commands ask for (submit, cancel, continue, read).

A build is decided and queued here, as an operation of kind "build" (jobs.runner), whose
job is builds.runner.build_job.
"""

from __future__ import annotations

import contextlib
import logging

from django.db import transaction

import jobs.runner as jobs
from builds import admission, refs, runner
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
from ruddervirt.manifest import ManifestInvalid, parse

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
) -> Build:
    """Create a build of `revision` (default: the module's newest manifest) and queue it
    for the workers once the transaction commits. With queue=False the caller runs it
    (`manage.py build --wait` on a host without workers). BuildNotAllowed, with the path
    and line, when a buildRef names a module version `user` may not use (builds.refs),
    when the text is over this host's caps, and when the build may not start now
    (builds.admission: the user's concurrent builds, the host's memory and disk)."""
    revision = revision or module.latest_revision
    if revision is None:
        raise BuildNotAllowed(f"module {module.name} has no manifest yet")
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
            **build_plan_fields(manifest),
        )
        create_rows(build, manifest)
        record_created(BuildStatusChange, build, by=user, why=f"requested by {user}")
        jobs.submit(runner.KIND, build, by=user, queue=queue)
    return build


def submit_manifest(
    *, text: str, module_name: str, user, queue: bool = True, use_cache: bool = True
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
    )


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
    if detail:
        data["attempt"] = build.attempt
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
